# COCO-Stuff 164k (171 classes) with detectron2's semantic-FPN input recipe, the one the
# paper trains with (Sec. 5.2). Adapted from mmseg 1.2.2
# configs/_base_/datasets/coco-stuff164k.py, whose recipe (random 0.5-2.0 rescale of a
# 2048x512 scale, 512x512 crops, photometric distortion) is replaced as commented.
# Layout (see docs/datasets.md): data/coco_stuff164k/images/{train,val}2017/*.jpg and
# data/coco_stuff164k/annotations/{train,val}2017/*_labelTrainIds.png.
dataset_type = 'COCOStuffDataset'
data_root = 'data/coco_stuff164k'
num_classes = 171  # mmseg's COCOStuffDataset; 255 is ignored
# Checked loaders (vtseg.datasets.loading, docs/reliability.md): a sample whose label map
# differs in size from its image (checked on the files as decoded, before any resize), is
# RGB, 16-bit above 255 or holds values beyond the classes, or an image under 8 pixels on a
# side, raises BadSampleError naming the file, in training and in testing. To skip such
# samples in training instead (counted and listed at the end), set on_error='skip' in the
# first two transforms of train_pipeline.
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', num_classes=num_classes),
    # detectron2 INPUT.MIN_SIZE_TRAIN=(640, 672, ..., 800), MAX_SIZE_TRAIN=1333,
    # sampling 'choice': short side drawn from the list, long side capped at 1333.
    dict(
        type='RandomChoiceResize',
        scales=list(range(640, 801, 32)),
        resize_type='ResizeShortestEdge',
        max_size=1333),
    # No crop: detectron2's semantic FPN 1x trains on whole resized images (INPUT.CROP
    # disabled). Images of a batch are padded to a multiple of 32 by the data
    # preprocessor (size_divisor in the model config), as detectron2 does.
    dict(type='RandomFlip', prob=0.5),
    # No PhotoMetricDistortion: detectron2's recipe only resizes and flips.
    dict(type='PackSegInputs')
]
test_pipeline = [
    # mmcv's loader: mmseg's inference API looks it up by this name; the label loader
    # below checks the image size and the label against it.
    dict(type='LoadImageFromFile'),
    # detectron2 INPUT.MIN_SIZE_TEST=800, MAX_SIZE_TEST=1333 (mmseg's base: 2048x512).
    dict(type='ResizeShortestEdge', scale=800, max_size=1333),
    # add loading annotation after ``Resize`` because ground truth
    # does not need to do resize data transform
    dict(type='CheckedLoadAnnotations', num_classes=num_classes),
    dict(type='PackSegInputs')
]
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale_factor=r, keep_ratio=True)
                for r in img_ratios
            ],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ], [dict(type='CheckedLoadAnnotations', num_classes=num_classes)],
            [dict(type='PackSegInputs')]
        ])
]
train_dataloader = dict(
    # Total batch 32 (paper) = 8 GPUs x 4 images. With another GPU count, keep
    # GPUs x batch_size = 32 or scale the LR yourself (auto_scale_lr is off).
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='images/train2017', seg_map_path='annotations/train2017'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='images/val2017', seg_map_path='annotations/val2017'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# With enable=True (`--cfg-options auto_scale_lr.enable=True`) mmengine scales the LR by
# (GPUs x batch_size) / 32; off by default so that
# the paper's LR is used as written.
auto_scale_lr = dict(enable=False, base_batch_size=32)

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
