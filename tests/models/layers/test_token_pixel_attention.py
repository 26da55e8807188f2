"""The fused few-token attention: its own backward against autograd's, in every layout."""
import pytest
import torch

from vtseg.models.layers.token_pixel_attention import token_pixel_attention

B, N, C, L = 2, 23, 6, 3


def _pixels(channels_major, *batch, channels=C):
    """(B..., N, C) pixels stored one pixel per row, or one channel per row (NCHW)."""
    if channels_major:
        return torch.randn(*batch, channels, N, dtype=torch.float64).transpose(-2, -1)
    return torch.randn(*batch, N, channels, dtype=torch.float64)


def _reference(q, k, v, scale, residual):
    out = torch.softmax(q @ k.transpose(-2, -1) * scale, -1) @ v
    return out if residual is None else residual + out


def _runs_own_backward(out):
    """Whether the autograd graph of ``out`` holds the fused path's backward node."""
    nodes, seen = [out.grad_fn], set()
    while nodes:
        node = nodes.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name().endswith('TokenPixelAttentionBackward'):
            return True
        nodes.extend(n for n, _ in node.next_functions)
    return False


CASES = {
    # tokenizers: a few queries over the pixels, keys and values the same map
    'tokens-over-pixels': lambda cm: dict(q=torch.randn(B, 1, L, C), k='x', v='x'),
    'tokens-over-pixels-values-apart': lambda cm: dict(q=torch.randn(B, 1, L, C), k='x',
                                                       v=_pixels(cm, B, 1, channels=4)),
    # residuals, which no VT block adds to tokens: apart from, or the same as the queries
    'tokens-over-pixels-residual-apart': lambda cm: dict(q=torch.randn(B, 1, L, C), k='x',
                                                         v='x', residual=torch.randn(B, 1, L, C)),
    'tokens-over-pixels-residual-is-q': lambda cm: dict(q=torch.randn(B, 1, L, C), k='x',
                                                        v='x', residual='q'),
    # projector: the pixels over a few keys, with the pixels as the residual
    'pixels-over-tokens': lambda cm: dict(q='x', k=torch.randn(B, 1, L, C),
                                          v=torch.randn(B, 1, L, C), residual='x'),
    'pixels-over-tokens-residual-apart': lambda cm: dict(
        q=_pixels(False, B, 1, channels=5), k=torch.randn(B, 1, L, 5),
        v=torch.randn(B, 1, L, C), residual='x'),
    'pixels-over-tokens-no-residual': lambda cm: dict(q='x', k=torch.randn(B, 1, L, C),
                                                      v=torch.randn(B, 1, L, 4)),
    'pixels-over-tokens-values-are-keys': lambda cm: dict(q='x', k=torch.randn(B, 1, L, C),
                                                          v='k', residual='x'),
}


@pytest.mark.parametrize('channels_major', [False, True], ids=['channels_last', 'nchw'])
@pytest.mark.parametrize('scale', [1.0, 0.4])
@pytest.mark.parametrize('case', list(CASES))
def test_backward_matches_autograd(case, scale, channels_major):
    torch.manual_seed(0)
    spec = CASES[case](channels_major)
    x = _pixels(channels_major, B, 1).requires_grad_()
    own = [n for n in spec if not isinstance(spec[n], str)]  # 'x': the map, 'q': the queries

    def resolve(x, *others):
        full = dict(zip(own, others), x=x)
        full.update((n, full[spec[n]]) for n in spec if isinstance(spec[n], str))
        return full

    def fused(x, *others):
        full = resolve(x, *others)
        return token_pixel_attention(full['q'], full['k'], full['v'], scale=scale,
                                     residual=full.get('residual'))

    others = [spec[n].double().requires_grad_() for n in own]
    assert _runs_own_backward(fused(x, *others))
    torch.autograd.gradcheck(fused, (x, *others))
    full = resolve(x, *others)
    reference = _reference(full['q'], full['k'], full['v'], scale, full.get('residual'))
    torch.testing.assert_close(fused(x, *others), reference)


@pytest.mark.parametrize('channels_major', [False, True], ids=['channels_last', 'nchw'])
def test_map_gradient_keeps_the_maps_layout(channels_major):
    """A tokenizer's gradient reaches its map in the map's memory format."""
    x = _pixels(channels_major, B, 1).float().requires_grad_()
    q = torch.randn(B, 1, L, C, requires_grad=True)
    token_pixel_attention(q, x, x, scale=1.0).square().sum().backward()
    assert (x.grad.stride(-2) == 1) == channels_major, x.grad.stride()


@pytest.mark.filterwarnings('ignore::torch.jit.TracerWarning')
def test_inference_and_traces_run_the_plain_products():
    """Without gradients (and inside a trace: FLOP counting, ONNX export) the forward is
    plain tensor ops, with the same result."""
    x = torch.randn(B, 1, N, C)
    q = torch.randn(B, 1, L, C, requires_grad=True)
    with torch.no_grad():
        plain = token_pixel_attention(q, x, x, scale=1.0)
    assert plain.grad_fn is None
    assert _runs_own_backward(token_pixel_attention(q, x, x, scale=1.0))
    traced = torch.jit.trace(lambda q: token_pixel_attention(q, x, x, scale=1.0), (q,))
    assert 'PythonOp' not in str(traced.graph)
    torch.testing.assert_close(traced(q), plain)
    torch.testing.assert_close(token_pixel_attention(q, x, x, scale=1.0), plain)


def test_bfloat16_gradients_follow_float32():
    torch.manual_seed(0)
    x = torch.randn(B, 1, 200, C)
    k, v = torch.randn(B, 1, L, C), torch.randn(B, 1, L, C)
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        xi = x.to(dtype).detach().requires_grad_()
        ki = k.to(dtype).detach().requires_grad_()
        token_pixel_attention(xi, ki, v.to(dtype), scale=1.0,
                              residual=xi).float().square().mean().backward()
        grads.append((xi.grad.float(), ki.grad.float()))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=3e-2, atol=3e-2)


def test_batch_dims_broadcast_as_in_matmul():
    """Keys and values shared by every image broadcast over the queries' batch dims."""
    torch.manual_seed(0)
    x = torch.randn(B, 2, N, C, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, L, C, dtype=torch.float64, requires_grad=True)
    v = torch.randn(L, 4, dtype=torch.float64, requires_grad=True)
    out = token_pixel_attention(x, k, v, scale=0.5)
    torch.testing.assert_close(out, _reference(x, k, v, 0.5, None))
    torch.autograd.gradcheck(lambda x, k, v: token_pixel_attention(x, k, v, scale=0.5),
                             (x, k, v))


@pytest.mark.parametrize('case', ['tokens-over-pixels', 'pixels-over-tokens'])
def test_backward_under_autocast(case):
    """Under bfloat16 autocast (float32 inputs, products in bfloat16) the gradients have the
    inputs' dtype and follow those of float32."""
    torch.manual_seed(0)
    x = torch.randn(B, 1, 200, C)
    t = torch.randn(B, 1, L, C)
    grads = []
    for autocast in (False, True):
        xi, ti = x.clone().requires_grad_(), t.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            out = (token_pixel_attention(ti, xi, xi, scale=1.0) if case.startswith('tokens')
                   else token_pixel_attention(xi, ti, ti, scale=1.0, residual=xi))
        out.float().square().mean().backward()
        assert xi.grad.dtype == ti.grad.dtype == torch.float32
        grads.append((xi.grad, ti.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('tokens_are_queries', [True, False], ids=['tokenizer', 'projector'])
def test_sharp_attention_has_no_subnormal_weights(tokens_are_queries, dtype):
    """Logits that fall through the dtype's whole exponent range (from 0 to -120 in float32,
    to -800 in float64): the weights the products read hold no subnormal numbers (slow on
    CPUs), and the output and the gradients are those of the plain softmax."""
    from vtseg.models.layers.token_pixel_attention import _forward

    torch.manual_seed(0)
    n = 400
    depth = 120.0 if dtype == torch.float32 else 800.0
    # logits of token l at pixel i: -l * depth * i / (n - 1), plus a little noise
    pixels = torch.randn(B, n, C, dtype=dtype) * 1e-3
    pixels[..., 0] = torch.linspace(0, depth, n, dtype=dtype)
    tokens = torch.randn(B, L, C, dtype=dtype) * 1e-3
    tokens[..., 0] = -torch.arange(L, dtype=dtype)
    pixels.requires_grad_()
    tokens.requires_grad_()
    q, k, v = (tokens, pixels, pixels) if tokens_are_queries else (pixels, tokens, tokens)
    residual = None if tokens_are_queries else pixels

    with torch.no_grad():
        _, weights = _forward(q, k, v, 1.0, residual)
        plain = (q @ k.transpose(-2, -1)).softmax(-1)
    tiny = torch.finfo(dtype).tiny
    assert ((plain > 0) & (plain < tiny)).any(), 'the plain softmax should underflow here'
    assert not ((weights > 0) & (weights < tiny)).any()

    out = token_pixel_attention(q, k, v, scale=1.0, residual=residual)
    ref = _reference(q, k, v, 1.0, residual)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (pixels, tokens), grad)
    want = torch.autograd.grad(ref, (pixels, tokens), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
