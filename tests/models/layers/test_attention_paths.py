"""The attention seam: fused (SDPA) and explicit paths agree for every VT block."""
import copy
import os
import subprocess
import sys

import pytest
import torch

from vtseg.models.layers import (
    ClusteringTokenizer,
    FilterTokenizer,
    Projector,
    RecurrentTokenizer,
    TokenTransformer,
    VTModule,
    attention,
    explicit_attention,
    set_fused_attn,
    use_fused_attn,
)

# odd, 1-pixel-wide and non-square maps
SIZES = [(7, 5), (1, 9), (13, 11)]
C, L, CT = 12, 4, 8


def _blocks():
    return {
        'filter': FilterTokenizer(C, L, CT),
        'recurrent': RecurrentTokenizer(C, L, CT),
        'clustering': ClusteringTokenizer(C, L, CT),
        'transformer': TokenTransformer(CT, 2, value_proj=True),
        'transformer-narrow-qk': TokenTransformer(CT, 2, qk_channels=4),
        'projector': Projector(C, CT),
        'projector-literal': Projector(C, CT, qk_channels=6, fast=False),
        'vt-module': VTModule(C, L, CT, num_heads=2, recurrent=True),
    }


def _run(name, block, x, t):
    if name.startswith('transformer'):
        return (block(t),)
    if name.startswith('projector'):
        return (block(x, t),)
    if name == 'vt-module':
        return block(x, t)  # (x_out, tokens)
    if name == 'recurrent':
        return block(x, t)[:1]  # tokens (the maps exist on the explicit path only)
    return block(x)[:1]


def _pair(name):
    torch.manual_seed(0)
    fused = _blocks()[name]
    explicit = copy.deepcopy(fused)
    for m in fused.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = True
    for m in explicit.modules():
        if hasattr(m, 'fused_attn'):
            m.fused_attn = False
    return fused, explicit


def _tol(dtype):
    return dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5,
                                                                          atol=1e-5)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last],
                         ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('name', list(_blocks()))
def test_fused_equals_explicit_with_gradients(name, size, dtype, memory_format):
    fused, explicit = _pair(name)
    fused, explicit = fused.to(dtype), explicit.to(dtype)
    torch.manual_seed(1)
    x = torch.randn(2, C, *size, dtype=dtype).contiguous(memory_format=memory_format)
    t = torch.randn(2, L, CT, dtype=dtype)
    results = []
    for block in (fused, explicit):
        xi, ti = x.clone().requires_grad_(), t.clone().requires_grad_()
        outs = _run(name, block, xi, ti)
        sum(o.float().square().mean() for o in outs).backward()
        grads = {n: p.grad for n, p in block.named_parameters()}
        results.append((outs, xi.grad, ti.grad, grads))
    (out_f, gx_f, gt_f, gp_f), (out_e, gx_e, gt_e, gp_e) = results
    for a, b in zip(out_f, out_e):
        torch.testing.assert_close(a.float(), b.float(), **_tol(dtype))
    for a, b in [(gx_f, gx_e), (gt_f, gt_e)]:
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a.float(), b.float(), **_tol(dtype))
    assert gp_f.keys() == gp_e.keys()
    for key in gp_f:
        assert gp_f[key] is not None, f'{name}.{key} got no gradient on the fused path'
        torch.testing.assert_close(gp_f[key].float(), gp_e[key].float(), **_tol(dtype),
                                   msg=lambda m, key=key: f'gradient of {name}.{key}: {m}')


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last],
                         ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('fused', [True, False])
def test_projector_keeps_the_memory_format_of_its_map(memory_format, fused):
    proj, tok = Projector(C, CT), FilterTokenizer(C, L, CT)
    proj.fused_attn = tok.fused_attn = fused
    x = torch.randn(2, C, 13, 11).contiguous(memory_format=memory_format)
    out = proj(x, tok(x)[0])
    assert out.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last],
                         ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('name', ['filter', 'recurrent', 'clustering', 'projector',
                                  'projector-literal', 'vt-module'])
def test_gradient_of_a_map_comes_back_in_its_memory_format(name, memory_format):
    """On the fused path the gradient reaching a map has the map's layout (the projector's
    output is a view of its result, the few-token backward writes in the map's layout), so
    what made the map (an NCHW model's lateral conv and BatchNorm) never reads a
    mixed-layout gradient."""
    block = _blocks()[name]
    leaf = torch.randn(2, C, 13, 11, requires_grad=True)
    x = (leaf * 1).contiguous(memory_format=memory_format)  # a map some layer produced
    grads = []
    x.register_hook(grads.append)
    outs = _run(name, block, x, torch.randn(2, L, CT))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    assert grads[0].is_contiguous(memory_format=memory_format), grads[0].stride()


def test_fused_path_returns_no_maps_and_explicit_path_does():
    tok = FilterTokenizer(C, L)
    x = torch.randn(1, C, 5, 6)
    tok.fused_attn = True
    tokens, attn = tok(x)
    assert attn is None
    with explicit_attention(tok):
        tokens_e, attn_e = tok(x)
    assert tok.fused_attn is True  # restored
    assert attn_e.shape == (1, L, 5, 6)
    torch.testing.assert_close(tokens, tokens_e)


def test_explicit_attention_restores_after_an_exception():
    module = VTModule(C, L, CT, num_heads=2)
    before = {n: m.fused_attn for n, m in module.named_modules() if hasattr(m, 'fused_attn')}
    assert len(before) == 3  # tokenizer, transformer, projector
    with pytest.raises(RuntimeError, match='boom'):
        with explicit_attention(module):
            assert not any(m.fused_attn for m in module.modules() if hasattr(m, 'fused_attn'))
            raise RuntimeError('boom')
    after = {n: m.fused_attn for n, m in module.named_modules() if hasattr(m, 'fused_attn')}
    assert after == before


def test_explicit_path_weights_pass_through_the_named_softmax():
    seen = []
    softmax = torch.nn.Softmax(dim=-1)
    softmax.register_forward_hook(lambda m, i, o: seen.append(o))
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 6)
    out, weights = attention(q, k, v, scale=0.5, fused=False, softmax=softmax)
    assert len(seen) == 1 and seen[0] is weights
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3))
    torch.testing.assert_close(out, torch.softmax(q @ k.transpose(1, 2) * 0.5, -1) @ v)
    fused, none = attention(q, k, v, scale=0.5, fused=True)
    assert none is None
    torch.testing.assert_close(fused, out)


def test_default_switch_and_environment_variable():
    saved = use_fused_attn()
    try:
        set_fused_attn(False)
        assert Projector(4, 4).fused_attn is False
        set_fused_attn(True)
        assert Projector(4, 4).fused_attn is True
    finally:
        set_fused_attn(saved)
    code = ('from vtseg.models.layers import use_fused_attn, FilterTokenizer; '
            'print(use_fused_attn(), FilterTokenizer(4, 2).fused_attn)')
    for value, expected in [('0', 'False False'), ('1', 'True True')]:
        out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                             env={**os.environ, 'VTSEG_FUSED_ATTN': value},
                             check=True).stdout.strip().splitlines()[-1]
        assert out == expected


def test_bfloat16_softmax_over_many_pixels_is_stable_on_both_paths():
    tok = FilterTokenizer(8, 4).to(torch.bfloat16)
    x = (torch.randn(1, 8, 200, 200) * 30).to(torch.bfloat16)
    for fused in (True, False):
        tok.fused_attn = fused
        tokens, _ = tok(x)
        assert torch.isfinite(tokens).all()
        # Each token is a convex combination of pixels: inside the pixels' range.
        assert tokens.float().abs().max() <= x.float().abs().max() * 1.01


def test_channels_last_input_stays_channels_last():
    proj = Projector(C, CT)
    x = torch.randn(2, C, 6, 7).contiguous(memory_format=torch.channels_last)
    out = proj(x, torch.randn(2, L, CT))
    assert out.is_contiguous(memory_format=torch.channels_last)
    nchw = proj(x.contiguous(), t := torch.randn(2, L, CT))  # NCHW works too
    torch.testing.assert_close(nchw, proj(x, t))
