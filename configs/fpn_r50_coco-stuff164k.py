# Paper Table 9, "R-50 FPN": semantic FPN on an MSRA ResNet-50, COCO-Stuff 164k (171
# classes), detectron2's semantic FPN "1x" recipe: 8 GPUs x 4 images = batch 32, SGD
# LR 0.04, 90k iterations, steps at 60k/80k, short side 640-800 (max 1333), test at 800.
_base_ = [
    './_base_/models/fpn_r50_caffe.py',
    './_base_/datasets/coco-stuff164k_detectron2.py', './_base_/default_runtime.py',
    './_base_/schedules/schedule_90k_detectron2_1x.py'
]
custom_imports = dict(imports=['vtseg'], allow_failed_imports=False)
model = dict(
    # Whole images of different sizes: pad each batch to a multiple of 32 like detectron2
    # (SIZE_DIVISIBILITY=32), in training and at test time.
    data_preprocessor=dict(size_divisor=32, test_cfg=dict(size_divisor=32)),
    # The paper says "91 stuff classes"; mmseg's COCO-Stuff 164k has 171 (80 things + 91
    # stuff), and its converter writes 171-class labels.
    decode_head=dict(num_classes=171))
# Input sizes vary from batch to batch (no crop): cuDNN autotuning would re-run for every
# new size, so it is off here as in detectron2 (CUDNN_BENCHMARK=False); mmseg's runtime
# default turns it on.
env_cfg = dict(cudnn_benchmark=False)
