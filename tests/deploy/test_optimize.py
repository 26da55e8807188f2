"""The inference optimisation step (vtseg.deploy.optimize) and how the models compile."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm

import vtseg  # noqa: F401
from vtseg.deploy import fold_conv_bn, optimize_for_inference
from vtseg.models import VTFPN

CHANNELS = [8, 16, 32, 64]


def _segmentor(neck_type):
    norm = dict(type='BN')
    neck = dict(type=neck_type, in_channels=CHANNELS, out_channels=16, num_outs=4,
                norm_cfg=norm)
    if neck_type == 'VTFPN':
        neck.update(num_tokens=4, token_channels=32, num_heads=4)
    cfg = Config(dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[0, 0, 0], std=[1, 1, 1]),
        backbone=dict(type='ResNet', depth=18, stem_channels=8, base_channels=8,
                      out_indices=(0, 1, 2, 3), norm_cfg=norm),
        neck=neck,
        decode_head=dict(type='FPNHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                         feature_strides=[4, 8, 16, 32], channels=8, num_classes=3,
                         norm_cfg=norm, align_corners=False),
        train_cfg=dict(), test_cfg=dict(mode='whole')))
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    for m in model.modules():  # non-trivial BN statistics, so that folding matters
        if isinstance(m, _BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def _features(batch=2, size=(37, 45)):
    torch.manual_seed(1)
    return [torch.randn(batch, c, -(-size[0] // s), -(-size[1] // s))
            for c, s in zip(CHANNELS, (1, 2, 4, 8))]


@pytest.mark.parametrize('neck_type', ['FPN', 'VTFPN'])
def test_optimized_segmentor_equals_eager(neck_type):
    model = _segmentor(neck_type)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 67, 91)
    with torch.no_grad():
        ref = model(x, mode='tensor')
        fast_model = optimize_for_inference(model)
        fast = fast_model(x.contiguous(memory_format=torch.channels_last), mode='tensor')
        nchw = fast_model(x, mode='tensor')  # NCHW inputs work too
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(nchw, ref, rtol=1e-4, atol=1e-4)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, _BatchNorm) for m in fast_model.modules())  # all folded
    # The model given is left as it was (a copy is optimised unless inplace=True).
    assert any(isinstance(m, _BatchNorm) for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fold_refuses_a_norm_before_its_conv():
    from mmcv.cnn import ConvModule
    block = ConvModule(4, 4, 1, norm_cfg=dict(type='BN'), order=('norm', 'conv', 'act'))
    with pytest.raises(ValueError, match="normalises before its convolution.*fuse_conv_bn=False"):
        fold_conv_bn(block)


def test_vtfpn_keeps_the_memory_format_of_its_inputs():
    neck = VTFPN(CHANNELS, 16, 5, num_tokens=4, token_channels=32, num_heads=4).eval()
    feats = _features()
    with torch.no_grad():
        ref = neck(feats)
        outs = optimize_for_inference(neck)([f.contiguous(memory_format=torch.channels_last)
                                             for f in feats])
    for a, b in zip(outs, ref):
        assert a.is_contiguous(memory_format=torch.channels_last)
        assert b.is_contiguous()  # and NCHW in, NCHW out: no layout change on either side
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_hooks_see_what_runs_and_change_nothing():
    """A hook on a lateral conv sees the map the projector then reads, and outputs are the
    same with and without observers."""
    neck = VTFPN(CHANNELS, 16, 4, num_tokens=4, token_channels=32, num_heads=4,
                 norm_cfg=dict(type='BN')).eval()
    feats = _features()
    with torch.no_grad():
        ref = neck(feats)
        seen = []
        handles = [m.register_forward_hook(lambda mod, i, o: seen.append(o.clone()))
                   for m in neck.lateral_convs]
        observed = neck(feats)
        lateral0 = neck.lateral_convs[0](feats[0])
    for h in handles:
        h.remove()
    for a, b in zip(observed, ref):
        assert torch.equal(a, b)
    torch.testing.assert_close(seen[0], lateral0)


def _graph_breaks(fn, *args, **kwargs):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(fn)(*args, **kwargs)
    return explanation.graph_break_count, [str(r) for r in explanation.break_reasons]


def test_vtfpn_compiles_without_graph_breaks():
    neck = VTFPN(CHANNELS, 16, 4, num_tokens=4, token_channels=32, num_heads=4,
                 norm_cfg=dict(type='BN')).eval()
    with torch.no_grad():
        count, reasons = _graph_breaks(neck, _features())
    assert count == 0, reasons


def test_vtfpn_training_compiles_without_graph_breaks():
    """With gradients the few-token attention runs its own backward (an autograd Function),
    which dynamo traces as well."""
    neck = VTFPN(CHANNELS, 16, 4, num_tokens=4, token_channels=32, num_heads=4,
                 norm_cfg=dict(type='BN')).train()
    feats = [f.requires_grad_() for f in _features()]
    count, reasons = _graph_breaks(lambda fs: sum(o.square().mean() for o in neck(fs)), feats)
    assert count == 0, reasons
    compiled = torch.compile(neck)
    sum(o.square().mean() for o in compiled(feats)).backward()
    eager_grads = [f.grad.clone() for f in feats]
    for f in feats:
        f.grad = None
    sum(o.square().mean() for o in neck(feats)).backward()
    for a, b in zip(eager_grads, (f.grad for f in feats)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('neck_type', ['VTFPN'])
def test_segmentor_compiles_without_graph_breaks(neck_type):
    model = optimize_for_inference(_segmentor(neck_type))
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        count, reasons = _graph_breaks(model, x, mode='tensor')
    assert count == 0, reasons
