"""VTFPN: drop-in shapes against mmseg's FPN, gradients, the paper's layout, bad arguments."""
import pytest
import torch
from mmseg.models.backbones import ResNet
from mmseg.models.necks import FPN
from mmseg.registry import MODELS

import vtseg  # noqa: F401  (registers VTFPN)
from vtseg.models.layers import TokenTransformer
from vtseg.models.necks import VTFPN

SMALL = dict(num_tokens=4, token_channels=32, num_heads=4)


@pytest.fixture(scope='module')
def odd_features():
    """Features of a ResNet-18 for an odd, non-square 97x61 image (sizes 25x16 .. 4x2)."""
    torch.manual_seed(0)
    backbone = ResNet(depth=18, out_indices=(0, 1, 2, 3))
    backbone.eval()  # (mmseg's ResNet.train() returns None: no chaining)
    with torch.no_grad():
        feats = backbone(torch.randn(2, 3, 97, 61))
    return [f.detach() for f in feats]


@pytest.mark.parametrize('num_outs', [4, 5, 6])
def test_output_shapes_match_mmseg_fpn(odd_features, num_outs):
    in_channels = [f.shape[1] for f in odd_features]
    assert [tuple(f.shape[-2:]) for f in odd_features] == [(25, 16), (13, 8), (7, 4), (4, 2)]
    fpn = FPN(in_channels, 16, num_outs).eval()
    vtfpn = VTFPN(in_channels, 16, num_outs, **SMALL).eval()
    with torch.no_grad():
        expected = [tuple(o.shape) for o in fpn(odd_features)]
        got = [tuple(o.shape) for o in vtfpn(odd_features)]
    assert len(expected) == num_outs
    assert got == expected


def test_builds_from_fpn_config_with_type_swapped():
    """The FPN dict of mmseg's configs builds a VTFPN after changing only `type`."""
    cfg = dict(type='FPN', in_channels=[8, 16], out_channels=8, num_outs=3)
    fpn = MODELS.build(cfg)
    vtfpn = MODELS.build({**cfg, 'type': 'VTFPN', **SMALL})
    assert isinstance(fpn, FPN) and isinstance(vtfpn, VTFPN)


def test_paper_defaults_one_shared_transformer():
    """8 tokens of 1024 channels per level, one transformer over the tokens of all levels."""
    neck = VTFPN([256, 512, 1024, 2048], 256, 4)
    assert neck.num_tokens == 8
    assert [t.token_channels for t in neck.tokenizers] == [1024] * 4
    transformers = [m for m in neck.modules() if isinstance(m, TokenTransformer)]
    assert len(transformers) == 1
    seen = []
    transformers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    feats = [torch.randn(1, c, s, s) for c, s in zip([256, 512, 1024, 2048], [8, 4, 2, 1])]
    with torch.no_grad():
        neck(feats)
    assert seen == [torch.Size([1, 4 * 8, 1024])]  # (B, S * L, C_T)


def test_levels_exchange_information_through_tokens(odd_features):
    """Changing the finest input changes the coarsest output (only tokens connect them)."""
    in_channels = [f.shape[1] for f in odd_features]
    neck = VTFPN(in_channels, 16, 4, **SMALL).eval()
    changed = list(odd_features)
    changed[0] = changed[0] + torch.randn_like(changed[0])
    with torch.no_grad():
        before, after = neck(odd_features), neck(changed)
    assert not torch.allclose(before[3], after[3])


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN', requires_grad=True)])
def test_every_parameter_receives_a_gradient(odd_features, norm_cfg):
    in_channels = [f.shape[1] for f in odd_features]
    torch.manual_seed(0)
    neck = VTFPN(in_channels, 16, 5, norm_cfg=norm_cfg, **SMALL).train()
    neck.init_weights()
    outs = neck([f.clone().requires_grad_() for f in odd_features])
    sum(o.square().mean() for o in outs).backward()
    missing = [name for name, p in neck.named_parameters()
               if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'no gradient reached {missing}'


@pytest.mark.parametrize('norm_cfg', [None, dict(type='BN', requires_grad=True)])
def test_inference_path_matches_autograd_path(odd_features, norm_cfg):
    """Under no_grad the neck may take faster paths; results and inputs must not change."""
    in_channels = [f.shape[1] for f in odd_features]
    torch.manual_seed(0)
    neck = VTFPN(in_channels, 16, 4, norm_cfg=norm_cfg, **SMALL)
    neck.init_weights()
    if norm_cfg is not None:  # non-trivial running statistics
        neck.train()
        with torch.no_grad():
            neck(odd_features)
    neck.eval()
    inputs = [f.clone() for f in odd_features]
    with torch.no_grad():
        fast = neck(inputs)
    for f, g in zip(inputs, odd_features):
        assert torch.equal(f, g), 'VTFPN modified its input features'
    slow = neck([f.clone().requires_grad_() for f in odd_features])
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(in_channels=[]), 'in_channels'),
    (dict(in_channels=[8, 0]), 'in_channels'),
    (dict(in_channels=8), 'in_channels'),
    (dict(out_channels=0), 'out_channels'),
    (dict(num_outs=1), 'num_outs'),
    (dict(num_tokens=0), 'num_tokens'),
    (dict(token_channels=-4), 'token_channels'),
    (dict(num_heads=5), 'num_heads'),
    (dict(num_outs=2.0), 'num_outs'),
])
def test_bad_arguments_fail_clearly(kwargs, match):
    args = dict(in_channels=[8, 16], out_channels=8, num_outs=2, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        VTFPN(**args)


def test_bad_inputs_fail_clearly():
    neck = VTFPN([8, 16], 8, 2, **SMALL)
    with pytest.raises(ValueError, match='in_channels'):
        neck([torch.randn(1, 8, 4, 4)])  # one level instead of two
    with pytest.raises(ValueError, match='in_channels'):
        neck([torch.randn(1, 8, 4, 4), torch.randn(1, 12, 2, 2)])  # 12 channels, not 16
