"""VTModule, VTResNet (registered backbone), its classifier form, checkpoint loading,
the two VT-R50 configs and the Table 8 costs."""
import importlib.util
import logging
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmseg.models.backbones import ResNet
from mmseg.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import vtseg  # noqa: F401  (registers VTResNet)
from vtseg.analysis.table8 import (
    PAPER_TABLE8,
    build_classifier,
    count_macs,
    count_params,
    format_table8,
    table8_rows,
)
from vtseg.checkpoint import CheckpointMismatchError, load_checkpoint, load_resnet_weights
from vtseg.models import VTResNet, VTResNetClassifier
from vtseg.models.layers import FilterTokenizer, RecurrentTokenizer, VTModule

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ['configs/fpn_vt-r50_lip.py', 'configs/fpn_vt-r50_coco-stuff164k.py']


def _down(size: int, times: int) -> int:
    """Size after ``times`` stride-2 convs/pools with 'same' padding (ceil division)."""
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


# ----------------------------------------------------------------------------- VTModule
def test_vt_module_filter_then_recurrent():
    first = VTModule(32, num_tokens=4, token_channels=64, num_heads=4)
    second = VTModule(32, num_tokens=4, token_channels=64, num_heads=4, recurrent=True)
    assert isinstance(first.tokenizer, FilterTokenizer)
    assert isinstance(second.tokenizer, RecurrentTokenizer)
    for m in (first, second):  # the names tools hook into
        for name in ('tokenizer', 'transformer', 'projector'):
            assert isinstance(getattr(m, name).attn_softmax, torch.nn.Softmax)
    x = torch.randn(2, 32, 5, 7)
    y, tokens = first(x)
    z, tokens2 = second(y, tokens)
    assert y.shape == z.shape == x.shape
    assert tokens.shape == tokens2.shape == (2, 4, 64)
    with pytest.raises(ValueError, match='tokens_in'):
        second(y)
    with pytest.raises(ValueError, match='recurrent=True'):
        first(x, tokens)


# ------------------------------------------------------------------- shapes and strides
@pytest.mark.parametrize('depth,expansion,modules,vt_channels',
                         [(18, 1, 2, 512), (34, 1, 3, 512), (50, 4, 3, 1024),
                          (101, 4, 3, 1024)])
def test_output_shapes_strides_every_depth(depth, expansion, modules, vt_channels):
    model = MODELS.build(dict(type='VTResNet', depth=depth)).eval()
    assert len(model.vt_modules) == modules
    assert not model.vt_modules[0].recurrent
    assert all(m.recurrent for m in model.vt_modules[1:])
    assert all(m.num_tokens == 16 and m.token_channels == 1024 for m in model.vt_modules)
    h, w = 67, 45  # odd, non-square
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    assert len(outs) == 4
    for i in range(3):  # layer1..3: strides 4, 8, 16
        assert outs[i].shape == (1, 64 * 2**i * expansion, _down(h, i + 2), _down(w, i + 2))
    # VT stage: stride 16 like layer3 (no stage-5 downsampling)
    assert outs[3].shape == (1, vt_channels, _down(h, 4), _down(w, 4))


def test_out_indices_tokens_and_classifier():
    model = VTResNet(18, out_indices=(1, 3)).eval()
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        outs = model(x)
        levels, tokens = model.forward_features(x)
        assert torch.equal(model.forward_tokens(x), tokens)
    assert [o.shape[1] for o in outs] == [128, 512]
    assert torch.equal(outs[1], levels[3])
    assert tokens.shape == (2, 16, 1024)
    clf = VTResNetClassifier(18, num_classes=10).eval()
    with torch.no_grad():
        assert clf(x).shape == (2, 10)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match='depth'):
        VTResNet(152)
    with pytest.raises(ValueError, match='strides'):
        VTResNet(18, strides=(1, 2, 2, 2))
    with pytest.raises(ValueError, match='out_indices'):
        VTResNet(18, out_indices=(4,))
    with pytest.raises(ValueError, match='frozen_stages'):
        VTResNet(18, frozen_stages=5)
    with pytest.raises(ValueError, match='num_stages'):
        VTResNet(18, num_stages=4)


def test_every_parameter_receives_a_gradient():
    torch.manual_seed(0)
    # Narrow tokens keep it fast; the wiring is the same as with 1024 channels.
    small = dict(token_channels=128, num_heads=4)
    model = VTResNet(18, **small).train()
    outs = model(torch.randn(2, 3, 40, 36))
    loss = sum((o * torch.randn_like(o)).sum() for o in outs)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # The classifier reads the last tokens: the last module's transformer gets gradients.
    clf = VTResNetClassifier(18, num_classes=5, **small)
    clf(torch.randn(2, 3, 40, 36)).logsumexp(1).sum().backward()
    assert clf.backbone.vt_modules[-1].transformer.ffn[0].weight.grad.abs().sum() > 0
    assert clf.fc.weight.grad.abs().sum() > 0


# ------------------------------------------------------------- frozen_stages, norm_eval
def _shared(vt: VTResNet, ref: ResNet):
    """(name, vt module, mmseg module) of the stem and stages 1-3."""
    ref_modules = dict(ref.named_modules())
    for name, m in vt.named_modules():
        if name and not f'{name}.'.startswith(VTResNet.fresh_prefixes):
            yield name, m, ref_modules[name]


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3, 4])
def test_frozen_stages_as_mmseg_resnet(frozen_stages):
    vt = VTResNet(18, frozen_stages=frozen_stages)
    ref = ResNet(18, frozen_stages=min(frozen_stages, 4))
    vt.train()
    ref.train()
    ref_params = dict(ref.named_parameters())
    for name, p in vt.named_parameters():
        if name.startswith(VTResNet.fresh_prefixes):
            assert p.requires_grad == (frozen_stages < 4), name
        else:
            assert p.requires_grad == ref_params[name].requires_grad, name
    for name, m, r in _shared(vt, ref):
        assert m.training == r.training, name
    vt_stage = [vt.vt_in_conv, *vt.vt_modules.modules()]
    assert all(m.training == (frozen_stages < 4) for m in vt_stage)
    if frozen_stages >= 1:  # and something really is frozen
        assert not vt.layer1[0].conv1.weight.requires_grad and not vt.layer1.training


@pytest.mark.parametrize('norm_eval', [False, True])
def test_norm_eval_as_mmseg_resnet(norm_eval):
    vt = VTResNet(18, norm_eval=norm_eval).train()
    ref = ResNet(18, norm_eval=norm_eval)
    ref.train()  # mmseg's ResNet.train returns None
    for name, m, r in _shared(vt, ref):
        assert m.training == r.training, name
    bns = [m for m in vt.modules() if isinstance(m, _BatchNorm)]
    assert vt.vt_in_conv.bn in bns  # the VT stage's BN follows norm_eval too
    assert all(bn.training == (not norm_eval) for bn in bns)
    # Only BN is affected: the transformers' LayerNorm and the rest keep training.
    assert vt.vt_modules[0].transformer.norm1.training and vt.layer1.training


# --------------------------------------------------------------------------- checkpoints
# torchvision's resnet18 parameter names (a few of every kind; all 102 are checked below
# through the mmseg ResNet, which uses the same names).
TORCHVISION_KEYS = ['conv1.weight', 'bn1.weight', 'bn1.running_var', 'layer1.0.conv1.weight',
                    'layer1.1.bn2.bias', 'layer2.0.downsample.0.weight',
                    'layer2.0.downsample.1.running_mean', 'layer4.1.conv2.weight',
                    'fc.weight', 'fc.bias']


def _torchvision_resnet18_state(seed: int = 0) -> dict:
    """A ResNet-18 ImageNet state dict in torchvision's layout, with random values."""
    torch.manual_seed(seed)
    state = {k: (torch.randn_like(v) if v.is_floating_point() else v)
             for k, v in ResNet(18).state_dict().items()}
    state['fc.weight'] = torch.randn(1000, 512)
    state['fc.bias'] = torch.randn(1000)
    assert set(TORCHVISION_KEYS) <= set(state)
    return state


@pytest.fixture
def log_records():
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = MMLogger.get_current_instance()
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_torchvision_checkpoint_loads_into_shared_stages(tmp_path, log_records):
    state = _torchvision_resnet18_state()
    path = tmp_path / 'resnet18_torchvision.pth'
    torch.save(state, path)
    model = VTResNet(18, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    fresh_before = {k: v.clone() for k, v in model.state_dict().items()
                    if k.startswith(model.fresh_prefixes)}
    model.init_weights()
    own = model.state_dict()
    shared = [k for k in own if not k.startswith(model.fresh_prefixes)]
    assert len(shared) == 90  # stem + layer1..3 of ResNet-18, BN buffers included
    for k in shared:
        assert torch.equal(own[k], state[k]), k
    # The VT stage got ResNet's default initialisation, not checkpoint values.
    assert not torch.equal(own['vt_in_conv.conv.weight'],
                           fresh_before['vt_in_conv.conv.weight'])

    report = load_resnet_weights(model, str(path))
    expected_unused = sorted(k for k in state if k.startswith(('fc.', 'layer4.'))
                             and not k.endswith('num_batches_tracked'))  # BN counters
    assert report.unexpected == expected_unused and len(expected_unused) == 27
    assert report.missing == [] and report.shape_mismatch == {}
    fresh = [k for k in fresh_before if not k.endswith('num_batches_tracked')]
    assert sorted(report.expected_missing) == sorted(fresh)
    assert sorted(report.loaded) == sorted(k for k in shared
                                           if not k.endswith('num_batches_tracked'))
    assert report.prefix == ''
    text = '\n'.join(r.getMessage() for r in log_records)
    assert 'fc.weight' in text and 'layer4.1.conv2.weight' in text  # not used
    assert 'vt_modules.1.tokenizer.token_to_filter.weight' in text  # newly initialised


def test_mmseg_checkpoint_prefix_mismatch_and_strict(tmp_path):
    state = _torchvision_resnet18_state(seed=1)
    # An mmseg/mmengine checkpoint of a segmentor: 'state_dict' wrapper, 'backbone.' prefix.
    wrapped = {'meta': {'iter': 3}, 'state_dict': {
        **{f'backbone.{k}': v for k, v in state.items() if not k.startswith('fc.')},
        'decode_head.conv_seg.weight': torch.zeros(2, 4, 1, 1)}}
    path = tmp_path / 'segmentor.pth'
    torch.save(wrapped, path)
    model = VTResNet(18)
    report = load_resnet_weights(model, str(path))
    assert report.prefix == 'backbone.'
    assert torch.equal(model.layer3[1].conv2.weight, state['layer3.1.conv2.weight'])
    assert report.missing == []

    # A ResNet-18 checkpoint for VT-R34: layer*.2+ not found, reported; strict refuses.
    model34 = VTResNet(34)
    report = load_resnet_weights(model34, state)
    assert 'layer2.3.conv1.weight' in report.missing
    assert not any(k.startswith('vt_') for k in report.missing)
    with pytest.raises(CheckpointMismatchError, match='(?s)missing from the checkpoint.*'
                       'layer1.2.conv1.weight'):
        load_resnet_weights(model34, state, strict=True)
    # Same names, other shapes: R50 stem loads, layer weights are reported as mismatched.
    report = load_resnet_weights(VTResNet(50), state)
    assert report.shape_mismatch['layer1.0.conv1.weight'] == ((64, 64, 3, 3), (64, 64, 1, 1))
    assert 'conv1.weight' in report.loaded


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_checkpoint(str(tmp_path / 'missing.pth'))
    path = tmp_path / 'pickled_object.pth'
    torch.save({'state_dict': {}, 'extra': Path('x')}, path)  # needs a non-tensor global
    with pytest.raises(RuntimeError, match='pickled_object.pth'):
        load_checkpoint(str(path))
    with pytest.raises(CheckpointMismatchError, match='no tensor of the model'):
        load_resnet_weights(VTResNet(18), {'head.weight': torch.zeros(3)})


# ----------------------------------------------------------------------------- configs
@pytest.mark.parametrize('path', CONFIGS)
def test_vt_r50_configs_build(path):
    init_default_scope('mmseg')
    cfg = Config.fromfile(str(ROOT / path))
    assert cfg.model.backbone.type == 'VTResNet' and cfg.model.backbone.depth == 50
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'  # switched off here
    cfg.model.backbone.init_cfg = None
    model = MODELS.build(cfg.model).eval()
    assert isinstance(model.backbone, VTResNet)
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 67, 53))
        logits = model(torch.randn(1, 3, 67, 53), mode='tensor')
    # FPN gets layer1..3 and the VT map: strides 4, 8, 16, 16
    assert [f.shape[-2:] for f in feats] == [(17, 14), (9, 7), (5, 4), (5, 4)]
    assert logits.shape[1] == cfg.model.decode_head.num_classes


# ----------------------------------------------------------------------------- Table 8
#: Our counts (MACs without normalisation layers, parameters without norm affine).
PINNED = {
    'R18': (1_814_073_344, 11_679_912), 'VT-R18': (1_546_608_344, 11_550_888),
    'R34': (3_663_761_408, 21_780_648), 'VT-R34': (3_236_912_708, 20_999_336),
    'R50': (4_089_184_256, 25_503_912), 'VT-R50': (3_479_986_836, 21_093_032),
    'R101': (7_801_405_440, 44_443_816), 'VT-R101': (7_192_208_020, 40_032_936),
}


def test_vt_r18_costs_pinned():
    model = build_classifier('VT-R18')
    macs, params = PINNED['VT-R18']
    assert count_params(model) == params
    assert count_macs(model) == pytest.approx(macs, rel=1e-3)


@pytest.mark.slow
def test_table8_pinned_and_close_to_paper():
    rows = table8_rows()
    assert [r.name for r in rows] == list(PAPER_TABLE8)
    for r in rows:
        macs, params = PINNED[r.name]
        assert r.params == params, r.name
        assert r.macs == pytest.approx(macs, rel=1e-3), r.name
        if r.name.startswith('VT-'):
            assert abs(r.macs_diff) < 0.05, r.name
            if r.name != 'VT-R34':  # see the README: Table 8's VT-R34 is undisclosed
                assert abs(r.params_diff) < 0.05, r.name
        else:  # the plain ResNets reproduce the paper's counting
            assert abs(r.macs_diff) < 0.001 and abs(r.params_diff) < 0.005, r.name
    table = format_table8(rows)
    assert '| VT-R50 | 3.412 | 3.480 | +2.0% | 21.4 | 21.09 | -1.4% |' in table


def test_get_flops_table8_option(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location('get_flops', ROOT / 'tools' / 'get_flops.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    # One row keeps it fast; test_table8_pinned_and_close_to_paper covers all eight.
    monkeypatch.setattr(tool, 'table8_rows', lambda: table8_rows(['VT-R18']))
    tool.main(['--table8'])
    out = capsys.readouterr().out
    assert 'BN/LayerNorm affine parameters not counted' in out
    assert '| VT-R18 | 1.569 | 1.547 | -1.4% | 11.7 | 11.55 | -1.3% |' in out
    assert tool.main(['--table8', 'configs/fpn_vt-r50_lip.py']) == 2
    assert 'exactly one' in capsys.readouterr().err
