# Paper Table 10, "R50 VT-FPN": fpn_r50_lip.py with the FPN neck replaced by VT-FPN.
# Nothing else differs (tests/test_configs.py checks it).
_base_ = './fpn_r50_lip.py'
model = dict(
    neck=dict(
        _delete_=True,
        type='VTFPN',
        in_channels=[256, 512, 1024, 2048],
        out_channels=256,
        num_outs=4,
        num_tokens=8,  # paper: 8 visual tokens per pyramid level
        token_channels=1024,  # paper: 1024 channels per token
        # The paper trains VT-FPN with SyncBN; it normalises the lateral 1x1 convs, whose
        # output the tokenizer's softmax over pixels reads. mmseg's FPN has no norm there.
        norm_cfg=dict(type='SyncBN', requires_grad=True)))
