# VT-FPN on the CPU demo: fpn_r18_vtdemo.py with the FPN neck replaced by VTFPN, nothing
# else changed. Widths are the paper's ratios scaled to the demo (paper: C=256, L=8,
# C_T=1024, 16 heads).
_base_ = ['./fpn_r18_vtdemo.py']

model = dict(
    neck=dict(
        _delete_=True,
        type='VTFPN',
        in_channels=[64, 128, 256, 512],
        out_channels=64,
        num_outs=4,
        num_tokens=8,         # paper: 8 tokens per level
        token_channels=256,   # paper: 1024 (4x out_channels, kept)
        num_heads=4))         # paper: 16
