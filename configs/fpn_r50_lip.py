# Paper Table 10, "R50 FPN": semantic FPN on an MSRA ResNet-50, LIP, 473x473.
# 8 GPUs x 12 images = batch 96, SGD LR 0.01, weight decay 5e-4, 48k iterations (poly).
_base_ = [
    './_base_/models/fpn_r50_caffe.py', './_base_/datasets/lip_473x473.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_48k.py'
]
custom_imports = dict(imports=['vtseg'], allow_failed_imports=False)
crop_size = (473, 473)
model = dict(
    # Training crops smaller than 473x473 are padded to it (label 255 = ignored).
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=20))  # background + 19 parts
