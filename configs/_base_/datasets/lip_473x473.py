# LIP (Look Into Person) human parsing, 473x473. mmseg 1.2.2 ships `LIPDataset` but no
# config; this file follows the layout of mmseg's configs/_base_/datasets/*.py.
# Layout (see docs/datasets.md): data/LIP/{train,val}_images/*.jpg and
# data/LIP/{train,val}_segmentations/*.png; labels 0 (background) .. 19, 255 ignored.
dataset_type = 'LIPDataset'
data_root = 'data/LIP'
num_classes = 20  # background + 19 parts (mmseg's LIPDataset)
# 473x473 is the standard LIP resolution (CE2P, HRNetV2, SCHP) and the size of the paper's
# LIP FLOPs (Table 10); the paper gives no crop size.
crop_size = (473, 473)
# LIP's left/right part pairs: Left-/Right-arm, -leg, -shoe. A horizontal flip must swap
# them or the flipped label is wrong.
left_right_pairs = [(14, 15), (16, 17), (18, 19)]
# Checked loaders (vtseg.datasets.loading, docs/reliability.md): a sample whose label map
# differs in size from its image (checked on the files as decoded, before any resize), is
# RGB, 16-bit above 255 or holds values beyond the classes, or an image under 8 pixels on a
# side, raises BadSampleError naming the file, in training and in testing. To skip such
# samples in training instead (counted and listed at the end), set on_error='skip' in the
# first two transforms of train_pipeline.
train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='CheckedLoadAnnotations', num_classes=num_classes),
    # LIP images are person crops of many aspect ratios, mostly under 473 px. Like the LIP
    # recipes (CE2P, HRNetV2) each image is warped to 473x473 (keep_ratio=False) and
    # scaled by a random factor in [0.75, 1.25] (CE2P's scale_factor=0.25); mmseg's
    # generic recipe would keep the ratio and scale by 0.5-2.0.
    dict(
        type='RandomResize',
        scale=crop_size,
        ratio_range=(0.75, 1.25),
        keep_ratio=False),
    # No cat_max_ratio (mmseg's usual 0.75): background fills most LIP crops, so the
    # check would reject most crops and retry for nothing.
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5, swap_seg_labels=left_right_pairs),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    # mmcv's loader: mmseg's inference API looks it up by this name; the label loader
    # below checks the image size and the label against it.
    dict(type='LoadImageFromFile'),
    # Every image is evaluated at 473x473 (the paper's FLOPs size); mmseg resizes the
    # prediction back to the original image before computing IoU.
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    # add loading annotation after ``Resize`` because ground truth
    # does not need to do resize data transform
    dict(type='CheckedLoadAnnotations', num_classes=num_classes),
    dict(type='PackSegInputs')
]
# Multi-scale + flip test-time augmentation (`tools/test.py --tta`). Caution: mmseg's
# SegTTAModel averages the flipped prediction without swapping the left/right classes
# back, so flip TTA mixes Left-arm with Right-arm etc. Use the scales alone for LIP.
img_ratios = [0.75, 1.0, 1.25]
tta_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale=(int(473 * r), int(473 * r)), keep_ratio=False)
                for r in img_ratios
            ],
            [dict(type='CheckedLoadAnnotations', num_classes=num_classes)],
            [dict(type='PackSegInputs')],
        ])
]
train_dataloader = dict(
    # Total batch 96 (paper) = 8 GPUs x 12 images. With another GPU count, keep
    # GPUs x batch_size = 96 or scale the LR yourself (auto_scale_lr is off).
    batch_size=12,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(
            img_path='train_images', seg_map_path='train_segmentations'),
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
            img_path='val_images', seg_map_path='val_segmentations'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
# With enable=True (`--cfg-options auto_scale_lr.enable=True`) mmengine scales the LR by
# (GPUs x batch_size) / 96; off by default so that
# the paper's LR is used as written.
auto_scale_lr = dict(enable=False, base_batch_size=96)

val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
