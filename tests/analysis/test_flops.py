"""FLOP counting: every product counted, necks and models pinned at the paper's sizes.

FLOPs are multiply-accumulates as counted by mmengine's FlopAnalyzer (the paper's
convention). Tolerances: the paper's values are matched within 1% (FPN neck), 5% (VT-FPN
neck) and 3% (totals); vtseg's own measured FLOPs are pinned within 1% (FlopAnalyzer's
einsum counts are estimates and BatchNorm counting depends on how a norm is executed);
parameter counts are pinned exactly.
"""
import importlib.util
from pathlib import Path

import pytest
import torch
from mmengine.analysis import FlopAnalyzer
from mmseg.models.necks import FPN
from torch import nn

import vtseg  # noqa: F401
from vtseg.analysis.config_model import build_model_from_config, disable_pretrained
from vtseg.analysis.flops import (
    EXTRA_OP_HANDLES,
    flop_analyzer,
    format_complexity,
    model_complexity,
)
from vtseg.analysis.paper_tables import (
    PAPER_TABLES_9_10,
    RowResult,
    format_paper_tables,
    measure_paper_tables,
    relative_diff,
)
from vtseg.models.necks import VTFPN

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / 'configs'
R50_CHANNELS = [256, 512, 1024, 2048]
#: ResNet (caffe style, 7x7 stem) feature sizes at strides 4..32 for the paper's inputs.
FEATURE_SIZES = {
    (800, 1216): [(200, 304), (100, 152), (50, 76), (25, 38)],
    (473, 473): [(119, 119), (60, 60), (30, 30), (15, 15)],
}
#: The paper's tolerances, relative: FPN neck, VT-FPN neck, totals.
NECK_TOL = {'fpn': 0.01, 'vtfpn': 0.05}
TOTAL_TOL = 0.03


def get_flops_main():
    """``main`` of tools/get_flops.py (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location('get_flops', ROOT / 'tools' / 'get_flops.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


class _Neck(nn.Module):
    """Wraps a neck so that FlopAnalyzer can call it with one tensor per level."""

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, *feats):
        return self.neck(list(feats))


def neck_flops(neck: nn.Module, sizes, channels=R50_CHANNELS) -> int:
    feats = tuple(torch.zeros(1, c, h, w) for c, (h, w) in zip(channels, sizes))
    with torch.no_grad():
        return int(flop_analyzer(_Neck(neck).eval(), feats).total())


def vtfpn_macs_by_formula(sizes, channels, c, num_tokens, c_t) -> int:
    """VT-FPN's multiply-accumulates written out from its design (no norm on laterals).

    Per level with N pixels: lateral N C_i C; tokenizer logits and pooling 2 N C L, token
    projection L C C_T; projector key L C_T C, token-space query L C C, logits and read-out
    2 N C L, values L C_T C. Transformer over S L tokens: K, Q and the FFN 4 (S L) C_T^2,
    attention 2 (S L)^2 C_T, two LayerNorms 5 (S L) C_T each (FlopAnalyzer's convention).
    """
    total = 0
    for c_i, (h, w) in zip(channels, sizes):
        n = h * w
        total += n * c_i * c                                            # lateral 1x1
        total += 2 * n * c * num_tokens + num_tokens * c * c_t          # tokenizer
        total += num_tokens * (c_t * c + c * c + c_t * c) + 2 * n * c * num_tokens  # projector
    t = len(channels) * num_tokens
    total += 4 * t * c_t * c_t + 2 * t * t * c_t + 2 * 5 * t * c_t     # transformer
    return total


@pytest.mark.parametrize('fused', [True, False], ids=['fused', 'explicit'])
@pytest.mark.parametrize('shape', sorted(FEATURE_SIZES))
def test_vtfpn_counts_every_product(shape, fused):
    """FlopAnalyzer's count of VT-FPN equals its written-out MACs on both attention paths:
    no product counts zero (a fused kernel FlopAnalyzer does not know would silently drop
    out)."""
    sizes = FEATURE_SIZES[shape]
    neck = VTFPN(R50_CHANNELS, 256, 4)
    for m in neck.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = fused
    expected = vtfpn_macs_by_formula(sizes, R50_CHANNELS, 256, 8, 1024)
    measured = neck_flops(neck, sizes)
    # einsum counts are numpy path estimates: off by a few hundred MACs at most.
    assert measured == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('neck_type', ['fpn', 'vtfpn'])
@pytest.mark.parametrize('shape', sorted(FEATURE_SIZES))
def test_neck_flops_match_the_paper(neck_type, shape):
    """The necks alone on R-50 features of the paper's input sizes."""
    table = 9 if shape == (800, 1216) else 10
    paper = next(r.neck_gflops for r in PAPER_TABLES_9_10
                 if r.table == table and r.neck == neck_type)
    neck = (FPN(R50_CHANNELS, 256, 4) if neck_type == 'fpn'
            else VTFPN(R50_CHANNELS, 256, 4, norm_cfg=dict(type='BN', requires_grad=True)))
    measured = neck_flops(neck, FEATURE_SIZES[shape]) / 1e9
    assert abs(relative_diff(measured, paper)) <= 100 * NECK_TOL[neck_type], (measured, paper)


def test_sdpa_is_counted_as_its_two_products():
    class Attend(nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.zeros(2, 3, 7, 4), torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 5, 6)
    with torch.no_grad():
        assert flop_analyzer(Attend(), (q, k, v)).total() == 2 * 3 * 7 * 5 * (4 + 6)


def test_baddbmm_is_counted_as_a_matrix_product():
    class Fused(nn.Module):
        def forward(self, x, a, b):
            return x.clone().baddbmm_(a, b)

    x, a, b = torch.zeros(2, 3, 5), torch.zeros(2, 3, 4), torch.zeros(2, 4, 5)
    with torch.no_grad():
        analyzer = FlopAnalyzer(Fused(), (x, a, b)).set_op_handle(**EXTRA_OP_HANDLES)
        assert analyzer.total() == 2 * 3 * 4 * 5


def test_disable_pretrained_switches_off_every_reference():
    cfg = dict(type='EncoderDecoder', pretrained='open-mmlab://x',
               backbone=dict(init_cfg=dict(type='Pretrained', checkpoint='a.pth')),
               neck=dict(init_cfg=[dict(type='Xavier'), dict(type='Pretrained', checkpoint='b')]),
               auxiliary_head=[dict(init_cfg=dict(type='Normal'))])
    changed = disable_pretrained(cfg)
    assert sorted(changed) == ['model.backbone.init_cfg', 'model.neck.init_cfg',
                               'model.pretrained']
    assert cfg['pretrained'] is None and cfg['backbone']['init_cfg'] is None
    assert cfg['auxiliary_head'][0]['init_cfg'] == dict(type='Normal')


def test_get_flops_tool_on_a_config(capsys):
    main = get_flops_main()
    main([str(CONFIGS / 'vtfpn_r50_lip.py'), '--shape', '65', '97',
          '--cfg-options', 'model.decode_head.num_classes=7'])
    out = capsys.readouterr().out
    assert 'pretrained weights not loaded: model.backbone.init_cfg' in out
    assert 'input 1x3x65x97' in out
    for part in ('backbone', 'neck', 'decode_head', 'total'):
        assert f'\n{part} ' in out
    assert 'Not counted by FlopAnalyzer: ' in out and 'aten::max_pool2d' in out
    # 7 classes: the classifier has 128 * 7 + 7 parameters.
    model, _, _ = build_model_from_config(
        CONFIGS / 'vtfpn_r50_lip.py', {'model.decode_head.num_classes': 7})
    assert f'{sum(p.numel() for p in model.parameters()):,}' in out


@pytest.mark.parametrize('argv, message', [
    ([], 'either a CONFIG or --paper-tables'),
    (['configs/fpn_r50_lip.py', '--paper-tables'], 'either a CONFIG or --paper-tables'),
    (['configs/fpn_r50_lip.py', '--shape', '0', '5'], 'positive'),
])
def test_get_flops_tool_rejects_bad_arguments(argv, message, capsys):
    main = get_flops_main()
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_get_flops_tool_errors_name_the_problem(tmp_path, capsys):
    main = get_flops_main()
    assert main([str(tmp_path / 'missing.py')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    cfg = tmp_path / 'no_crop.py'
    cfg.write_text("model = dict(type='FPN', in_channels=[4], out_channels=4, num_outs=1)\n")
    assert main([str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count('error: ') == 1 and '--shape' in err
    with pytest.raises(FileNotFoundError, match='--config-dir'):
        measure_paper_tables(tmp_path)


def test_paper_table_format_shows_paper_ours_and_difference():
    from vtseg.analysis.flops import Complexity
    row = PAPER_TABLES_9_10[5]  # R50 VT-FPN, LIP: 26.4 G total, 2.0 G neck
    fake = Complexity((473, 473), flops={'': 27_720_000_000, 'neck': 1_900_000_000},
                      params={'': 1_000_000, 'neck': 10}, unsupported_ops={'aten::add': 2})
    text = format_paper_tables([RowResult(row, 'configs/vtfpn_r50_lip.py', fake)])
    assert 'Table 10, LIP, FLOPs at 473x473' in text
    assert ('| R50 VT-FPN | `vtfpn_r50_lip.py` | 26.4 G | 27.72 G | +5.0% '
            '| 2.0 G | 1.90 G | -5.0% | 1.00 M |') in text
    assert 'aten::add (2x)' in text
    assert 'Table 9' not in text


def test_format_complexity_lists_parts_and_total():
    model = nn.Sequential()
    model.backbone = nn.Conv2d(3, 4, 1, bias=False)
    model.neck = nn.Conv2d(4, 4, 1, bias=False)
    result = model_complexity(model, (4, 5))
    assert result.flops == {'': 3 * 4 * 20 + 16 * 20, 'backbone': 240, 'neck': 320}
    text = format_complexity(result)
    assert text.splitlines()[-2].split()[:3] == ['total', '0.000', '28']


# ---------------------------------------------------------------------------------------
# The eight models of Tables 9 and 10, each built from its config and counted once at the
# paper's input size (about a minute on 2 CPU cores).

#: vtseg's own measurements: FLOPs (MACs) and exact parameter counts per part.
PINNED = {
    'fpn_r50_coco-stuff164k.py': dict(
        flops=dict(total=160.710e9, backbone=75.168e9, neck=55.120e9, decode_head=30.328e9),
        params=dict(total=28_498_283, backbone=23_508_032, neck=3_344_384,
                    decode_head=1_645_867)),
    'vtfpn_r50_coco-stuff164k.py': dict(
        flops=dict(total=113.928e9, backbone=75.168e9, neck=8.338e9, decode_head=30.328e9),
        params=dict(total=33_760_619, backbone=23_508_032, neck=8_606_720,
                    decode_head=1_645_867)),
    'fpn_r101_coco-stuff164k.py': dict(
        flops=dict(total=232.880e9, backbone=147.338e9, neck=55.120e9, decode_head=30.328e9),
        params=dict(total=47_490_411, backbone=42_500_160, neck=3_344_384,
                    decode_head=1_645_867)),
    'vtfpn_r101_coco-stuff164k.py': dict(
        flops=dict(total=186.098e9, backbone=147.338e9, neck=8.338e9, decode_head=30.328e9),
        params=dict(total=52_752_747, backbone=42_500_160, neck=8_606_720,
                    decode_head=1_645_867)),
    'fpn_r50_lip.py': dict(
        flops=dict(total=37.491e9, backbone=17.738e9, neck=12.898e9, decode_head=6.834e9),
        params=dict(total=28_478_804, backbone=23_508_032, neck=3_344_384,
                    decode_head=1_626_388)),
    'vtfpn_r50_lip.py': dict(
        flops=dict(total=26.675e9, backbone=17.738e9, neck=2.082e9, decode_head=6.834e9),
        params=dict(total=33_741_140, backbone=23_508_032, neck=8_606_720,
                    decode_head=1_626_388)),
    'fpn_r101_lip.py': dict(
        flops=dict(total=54.584e9, backbone=34.831e9, neck=12.898e9, decode_head=6.834e9),
        params=dict(total=47_470_932, backbone=42_500_160, neck=3_344_384,
                    decode_head=1_626_388)),
    'vtfpn_r101_lip.py': dict(
        flops=dict(total=43.768e9, backbone=34.831e9, neck=2.082e9, decode_head=6.834e9),
        params=dict(total=52_733_268, backbone=42_500_160, neck=8_606_720,
                    decode_head=1_626_388)),
}


@pytest.fixture(scope='module')
def paper_results():
    return {Path(r.config).name: r for r in measure_paper_tables(CONFIGS)}


@pytest.mark.slow
@pytest.mark.parametrize('row', PAPER_TABLES_9_10, ids=lambda r: r.config_name)
def test_model_flops_match_the_paper(paper_results, row):
    result = paper_results[row.config_name]
    assert result.complexity.input_shape == row.input_shape
    assert abs(relative_diff(result.total_gflops, row.total_gflops)) <= 100 * TOTAL_TOL
    assert abs(relative_diff(result.neck_gflops, row.neck_gflops)) <= 100 * NECK_TOL[row.neck]


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(PINNED))
def test_model_flops_and_params_pinned(paper_results, name):
    complexity = paper_results[name].complexity
    pinned = PINNED[name]
    for part, expected in pinned['params'].items():
        assert complexity.params['' if part == 'total' else part] == expected, part
    for part, expected in pinned['flops'].items():
        assert complexity.flops['' if part == 'total' else part] == pytest.approx(
            expected, rel=0.01), part


def test_model_complexity_restores_each_submodule_mode():
    import torch.nn as nn

    from vtseg.analysis.flops import model_complexity
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model[1].eval()  # a frozen norm inside a training model must stay frozen
    model_complexity(model, (8, 8))
    assert model.training and not model[1].training
