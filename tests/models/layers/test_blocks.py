"""Tests of the VT building blocks in vtseg.models.layers."""
import math

import pytest
import torch
import torch.nn.functional as F

from vtseg.models.layers import (
    ClusteringTokenizer,
    FilterTokenizer,
    PoolingTokenizer,
    Projector,
    RecurrentTokenizer,
    TokenTransformer,
    explicit_attention,
    token_grid,
)

SIZES = [(7, 5), (1, 9), (13, 13), (4, 11)]  # odd, 1-pixel-wide and non-square maps


def _tokenize(tok, x, tokens_in=None):
    """Tokens and attention maps: the explicit attention path returns the maps."""
    with explicit_attention(tok):
        return tok(x, tokens_in) if isinstance(tok, RecurrentTokenizer) else tok(x)


TOKENIZERS = [FilterTokenizer, RecurrentTokenizer, PoolingTokenizer, ClusteringTokenizer]


@pytest.mark.parametrize('kind', TOKENIZERS)
@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('ct', [None, 10])
def test_tokenizer_shapes_and_attention(kind, size, ct):
    torch.manual_seed(0)
    b, c, n_tok = 2, 6, 4
    tok = kind(c, n_tok, ct)
    x = torch.randn(b, c, *size)
    tokens_in = torch.randn(b, n_tok, ct or c)
    tokens, attn = _tokenize(tok, x, tokens_in)
    assert tokens.shape == (b, n_tok, ct or c)
    assert attn.shape == (b, n_tok, *size)
    # softmax_HW: every token's attention sums to one over the pixels.
    torch.testing.assert_close(attn.sum((2, 3)), torch.ones(b, n_tok))
    assert (attn >= 0).all()
    if ct is None:
        # T = A^T X: each token is its attention-weighted average of the pixels.
        expected = torch.einsum('blhw,bchw->blc', attn, x)
        torch.testing.assert_close(tokens, expected, rtol=1e-5, atol=1e-5)


def test_filter_tokenizer_matches_equation():
    torch.manual_seed(0)
    tok = FilterTokenizer(5, 3)
    x = torch.randn(2, 5, 4, 6)
    tokens, attn = _tokenize(tok, x)
    xf = x.flatten(2).transpose(1, 2)  # (B, N, C)
    a = torch.softmax(xf @ tok.token_filters.t(), dim=1)  # softmax over HW of X W_A
    torch.testing.assert_close(tokens, a.transpose(1, 2) @ xf)


def test_recurrent_tokenizer_uses_previous_tokens():
    torch.manual_seed(0)
    tok = RecurrentTokenizer(5, 3, 7)
    x = torch.randn(1, 5, 4, 4)
    t1 = torch.randn(1, 3, 7)
    _, a1 = _tokenize(tok, x, t1)
    _, a2 = _tokenize(tok, x, t1 * 3 + 1)
    assert not torch.allclose(a1, a2)
    xf = x.flatten(2).transpose(1, 2)
    w_r = t1 @ tok.token_to_filter.weight.t()  # W_R = T_in W_{T->R}: (1, L, C)
    a = torch.softmax(xf @ w_r.transpose(1, 2), dim=1)
    torch.testing.assert_close(a1.flatten(2).transpose(1, 2), a)
    with pytest.raises(ValueError, match='incoming tokens'):
        tok(x, torch.randn(1, 4, 7))


def test_pooling_tokenizer_is_bilinear_downsampling():
    x = torch.randn(2, 3, 14, 14)
    tok = PoolingTokenizer(3, 16)
    tokens, _ = tok(x)
    ref = F.interpolate(x, size=(4, 4), mode='bilinear', align_corners=False)
    torch.testing.assert_close(tokens, ref.flatten(2).transpose(1, 2))
    assert token_grid(16) == (4, 4) and token_grid(8) == (2, 4) and token_grid(7) == (1, 7)


def test_clustering_tokenizer_finds_clusters():
    # Two kinds of pixels: left half along e0, right half along e1. Two tokens must split
    # the image into exactly those halves.
    x = torch.zeros(1, 4, 6, 8)
    x[:, 0, :, :4] = 3.0
    x[:, 1, :, 4:] = 3.0
    x = x + 0.01 * torch.randn_like(x)
    tok = ClusteringTokenizer(4, 2)
    centroids = tok.centroids(x)
    assert centroids.shape == (1, 2, 4)
    # The centroids are the two pixel directions e0 and e1, in some order.
    found = sorted(centroids[0].argmax(-1).tolist())
    assert found == [0, 1]
    torch.testing.assert_close(centroids[0].max(-1).values, torch.ones(2), atol=1e-3, rtol=0)
    _, attn = _tokenize(tok, x)
    left, right = attn[0, :, :, :4].sum((1, 2)), attn[0, :, :, 4:].sum((1, 2))
    # Each token puts nearly all of its weight on one half, and the two differ.
    assert torch.all(torch.maximum(left, right) > 0.9)
    assert (left > right).tolist() in ([True, False], [False, True])


@pytest.mark.parametrize('heads', [1, 4])
@pytest.mark.parametrize('norm', [True, False])
def test_token_transformer(heads, norm):
    torch.manual_seed(0)
    tr = TokenTransformer(8, heads, norm=norm, value_proj=heads == 4)
    t = torch.randn(3, 5, 8)
    out = tr(t)
    assert out.shape == t.shape
    captured = {}
    h = tr.attn_softmax.register_forward_hook(lambda m, i, o: captured.update(attn=o))
    with explicit_attention(tr):
        tr(t)
    h.remove()
    assert captured['attn'].shape == (3, heads, 5, 5)
    torch.testing.assert_close(captured['attn'].sum(-1), torch.ones(3, heads, 5))


def test_token_transformer_literal_equation():
    """Single head, no norm, no value projection: exactly Eqs. (3)-(4) (with scaling)."""
    torch.manual_seed(0)
    tr = TokenTransformer(6, 1, norm=False)
    t = torch.randn(2, 4, 6)
    k, q = tr.key.weight.t(), tr.query.weight.t()
    t1 = t + torch.softmax((t @ k) @ (t @ q).transpose(1, 2) * 6 ** -0.5, dim=-1) @ t
    f1, f2 = tr.ffn[0], tr.ffn[2]
    t2 = t1 + f2(torch.relu(f1(t1)))
    torch.testing.assert_close(tr(t), t2)


def test_token_transformer_rejects_bad_heads():
    with pytest.raises(ValueError, match='num_heads=3 must divide'):
        TokenTransformer(8, 3)
    with pytest.raises(ValueError, match='positive integer'):
        TokenTransformer(0)


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('ct', [6, 12])
def test_projector_fast_equals_literal(size, ct):
    torch.manual_seed(0)
    fast = Projector(6, ct, qk_channels=5, fast=True)
    plain = Projector(6, ct, qk_channels=5, fast=False)
    plain.load_state_dict(fast.state_dict())
    x, t = torch.randn(2, 6, *size), torch.randn(2, 3, ct)
    out = fast(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(out, plain(x, t), rtol=1e-5, atol=1e-5)
    # The literal equation, written out: X + softmax_L((X W_Q)(T W_K)^T) T W_V.
    xf = x.flatten(2).transpose(1, 2)
    logits = (xf @ fast.query.weight.t()) @ (t @ fast.key.weight.t()).transpose(1, 2)
    a = torch.softmax(logits * 5 ** -0.5, dim=-1)
    assert torch.allclose(a.sum(-1), torch.ones(2, xf.shape[1]))
    ref = xf + a @ fast.value(t)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), ref, rtol=1e-5, atol=1e-5)


def _all_blocks():
    return {
        'filter': FilterTokenizer(4, 3, 5),
        'recurrent': RecurrentTokenizer(4, 3, 5),
        'pooling': PoolingTokenizer(4, 4, 5),
        'clustering': ClusteringTokenizer(4, 3, 5),
        'transformer': TokenTransformer(6, 2, value_proj=True),
        'projector': Projector(4, 5),
        'projector-literal': Projector(4, 5, fast=False),
    }


def _run_block(name, block, x, t):
    if name == 'transformer':
        return block(t)
    if name.startswith('projector'):
        return block(x, t)
    if name == 'recurrent':
        return block(x, t)[0]
    return block(x)[0]


@pytest.mark.parametrize('name', list(_all_blocks()))
def test_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    block = _all_blocks()[name]
    x = torch.randn(2, 4, 5, 3, requires_grad=True)
    t = torch.randn(2, 3, 6 if name == 'transformer' else 5, requires_grad=True)
    out = _run_block(name, block, x, t)
    out.square().sum().backward()
    for pname, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f'{name}.{pname} got no gradient'
    inp = t if name == 'transformer' else x
    assert inp.grad is not None and inp.grad.abs().sum() > 0


@pytest.mark.parametrize('name', list(_all_blocks()))
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    block = _all_blocks()[name].double()
    x = torch.randn(1, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 3, 6 if name == 'transformer' else 5, dtype=torch.float64,
                    requires_grad=name in ('transformer', 'recurrent') or
                    name.startswith('projector'))
    inputs = (x, t) if t.requires_grad else (x,)
    if name == 'clustering':
        # k-means runs without gradient by design: check the differentiable part with the
        # centroids held at their value for x.
        fixed = block.centroids(x)
        block.centroids = lambda _: fixed

    def fn(*args):
        return _run_block(name, block, args[0], args[1] if len(args) > 1 else t)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('kind', TOKENIZERS)
def test_tokenizer_rejects_bad_arguments(kind):
    with pytest.raises(ValueError, match='num_tokens must be a positive integer'):
        kind(4, 0)
    with pytest.raises(ValueError, match=r'expects a \(B, 4, H, W\)'):
        _tokenize(kind(4, 2), torch.randn(1, 3, 5, 5), torch.randn(1, 2, 4))


def test_tokenizer_low_precision_softmax_is_stable():
    """Softmax over ~40k pixels in bfloat16 must not produce NaN or lose normalisation."""
    tok = FilterTokenizer(8, 4)
    x = (torch.randn(1, 8, 200, 200) * 30).to(torch.bfloat16)
    tok = tok.to(torch.bfloat16)
    tokens, attn = _tokenize(tok, x)
    assert torch.isfinite(tokens).all()
    assert math.isclose(attn.float().sum((2, 3)).mean().item(), 1.0, rel_tol=1e-2)
