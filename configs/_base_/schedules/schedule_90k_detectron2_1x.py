# detectron2's "1x" schedule as the paper runs it on COCO-Stuff (batch 32): SGD, base LR
# 0.04, 90k iterations, LR x0.1 at 60k and 80k. Written in the layout of mmseg 1.2.2
# configs/_base_/schedules/schedule_80k.py (poly decay there, replaced here).
max_iters = 90000
optimizer = dict(
    type='SGD',
    lr=0.04,  # paper: 0.04 at batch 32 (detectron2's Base-RCNN-FPN: 0.02 at batch 16)
    momentum=0.9,
    # The paper gives none: detectron2's default SOLVER.WEIGHT_DECAY=1e-4 (mmseg: 5e-4).
    weight_decay=0.0001)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=optimizer,
    clip_grad=None,
    # detectron2's SOLVER.WEIGHT_DECAY_NORM=0: no weight decay on normalisation layers.
    paramwise_cfg=dict(norm_decay_mult=0.0))
param_scheduler = [
    # detectron2's warm-up (WARMUP_METHOD='linear', WARMUP_FACTOR=1/1000,
    # WARMUP_ITERS=1000); mmseg's schedules have none.
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    # detectron2 SOLVER.STEPS=(60000, 80000), GAMMA=0.1.
    dict(
        type='MultiStepLR',
        milestones=[60000, 80000],
        gamma=0.1,
        by_epoch=False,
        begin=0,
        end=max_iters)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # detectron2 SOLVER.CHECKPOINT_PERIOD=5000 (mmseg's schedules: 8000 or 16000).
    # vtseg's checkpoint hooks (vtseg/checkpoint/hooks.py, docs/reliability.md): atomic
    # saves, --resume past broken checkpoints, loads that do not fit the model refused.
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=5000),
    checkpoint_report=dict(type='CheckpointReportHook'),
    # One forward pass before the first iteration: parts that do not fit are named.
    model_check=dict(type='ModelCheckHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
