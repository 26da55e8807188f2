# Adapted from mmseg 1.2.2 configs/_base_/schedules/schedule_80k.py; only the length
# changes. Its optimizer is already the paper's LIP one: SGD, LR 0.01, momentum 0.9,
# weight decay 5e-4.
# Length: the paper gives no LIP schedule. LIP recipes at 473x473 (CE2P, HRNetV2, SCHP)
# train 150 epochs with poly decay; 48k iterations x 96 images = 151 epochs of LIP's
# 30,462 training images.
max_iters = 48000
# optimizer
optimizer = dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=0.0005)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=None)
# learning policy
param_scheduler = [
    dict(
        type='PolyLR',
        eta_min=1e-4,
        power=0.9,
        begin=0,
        end=max_iters,
        by_epoch=False)
]
# training schedule for 48k
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # vtseg's checkpoint hooks (vtseg/checkpoint/hooks.py, docs/reliability.md): atomic
    # saves, --resume past broken checkpoints, loads that do not fit the model refused.
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000),
    checkpoint_report=dict(type='CheckpointReportHook'),
    # One forward pass before the first iteration: parts that do not fit are named.
    model_check=dict(type='ModelCheckHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
