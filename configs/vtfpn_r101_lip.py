# Paper Table 10, "R101 VT-FPN": vtfpn_r50_lip.py on an MSRA ResNet-101, i.e.
# fpn_r101_lip.py with the VT-FPN neck.
_base_ = './vtfpn_r50_lip.py'
model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://detectron2/resnet101_caffe')))
