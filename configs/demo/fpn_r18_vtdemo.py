# FPN baseline of the CPU demo (tools/demo.py): ResNet-18 + FPN + FPNHead on the synthetic
# VTDemo set (python -m vtseg.datasets.demo), sized to train on 2 CPU cores in minutes.
# vtfpn_r18_vtdemo.py changes only the neck.
_base_ = ['../_base_/default_runtime.py']

custom_imports = dict(imports=['vtseg'], allow_failed_imports=False)

crop_size = (96, 96)  # the generator's image size: no resizing anywhere
num_classes = 6
# BN, not SyncBN: the demo trains in one CPU process (vtseg reverts SyncBN in gloo runs).
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,  # random init: nothing is downloaded
    backbone=dict(
        type='ResNetV1c',
        depth=18,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 1, 1),
        strides=(1, 2, 2, 2),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style='pytorch',
        contract_dilation=True),
    neck=dict(
        type='FPN',
        in_channels=[64, 128, 256, 512],
        out_channels=64,  # mmseg: 256; narrower for the CPU
        num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[64, 64, 64, 64],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=32,  # mmseg: 128
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

# Data: 96x96 PNGs; flips keep every cue (the beacon stays in the image).
dataset_type = 'VTDemoDataset'
data_root = 'data/vtdemo'
# Checked loaders (vtseg.datasets.loading, docs/reliability.md): a sample whose label map
# differs in size from its image (checked on the files as decoded, before any resize), is
# RGB, 16-bit above 255 or holds values beyond the classes, or an image under 8 pixels on a
# side, raises BadSampleError naming the file, in training and in testing. To skip such
# samples in training instead (counted and listed at the end), set on_error='skip' in the
# first two transforms of train_pipeline.
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', num_classes=num_classes),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='RandomFlip', prob=0.5, direction='vertical'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    # mmcv's loader: mmseg's inference API looks it up by this name; the label loader
    # below checks the image size and the label against it.
    dict(type='LoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', num_classes=num_classes),
    dict(type='PackSegInputs'),
]
# --tta: flips only. mmseg's usual rescaling (0.5-1.75) would change what decides
# disc_large vs disc_small (the radius), so it is not a valid augmentation here.
tta_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='RandomFlip', prob=0., direction='horizontal'),
             dict(type='RandomFlip', prob=1., direction='horizontal')],
            [dict(type='CheckedLoadAnnotations', num_classes=num_classes)],
            [dict(type='PackSegInputs')],
        ])
]
# Two cores: one loader worker decodes PNGs while the main process computes.
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# IoUMetric that also returns the per-class IoUs (tools/demo.py reads them).
val_evaluator = dict(type='ClassIoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

# Schedule: AdamW + poly decay converges fast from random init (mmseg's 20k-iteration SGD
# schedules assume an ImageNet backbone).
max_iters = 1000
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=1e-5, power=1.0, begin=50, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # vtseg's checkpoint hooks (vtseg/checkpoint/hooks.py, docs/reliability.md): atomic
    # saves, --resume past broken checkpoints, loads that do not fit the model refused.
    checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=max_iters,
                    max_keep_ckpts=2),
    checkpoint_report=dict(type='CheckpointReportHook'),
    # One forward pass before the first iteration: parts that do not fit are named.
    model_check=dict(type='ModelCheckHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False)
