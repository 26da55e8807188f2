"""vtseg._C: the fused CPU kernels against PyTorch's products, and where they apply."""
import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch

from vtseg.models.layers import FilterTokenizer, Projector, explicit_attention, token_pixel_kernels
from vtseg.models.layers.token_pixel_attention import _forward, token_pixel_attention
from vtseg.models.layers.token_pixel_kernels import (
    fused_forward,
    kernels_available,
    kernels_error,
    kernels_isa,
    kernels_threaded,
    pixel_product,
)


def test_the_extension_is_built():
    """The set-up builds vtseg._C; a broken build must not pass as PyTorch's products."""
    assert kernels_available(), kernels_error()
    if sys.platform.startswith('linux'):  # GCC (make setup's compiler) has OpenMP
        assert kernels_threaded(), ('vtseg._C was built without OpenMP: setup.py found no '
                                    '-fopenmp in the compiler (clang needs libomp)')


def test_unthreaded_kernels_leave_several_threads_to_pytorch(monkeypatch):
    """A build without OpenMP runs its kernels on one thread: with more, PyTorch's threaded
    products run instead (and it says so once); with one, the kernels run."""
    monkeypatch.setattr(token_pixel_kernels, '_THREADED', False)
    monkeypatch.setitem(token_pixel_kernels._warned, 'unthreaded', False)
    g = torch.Generator().manual_seed(0)
    x, t = _rows(1, 300, 32, g), torch.randn(1, 8, 32, generator=g)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.warns(UserWarning, match='built without OpenMP.*2 threads'):
            assert fused_forward(t, x, x, 1.0, None) is None
        with warnings.catch_warnings():
            warnings.simplefilter('error')  # once
            assert fused_forward(x, t, t, 1.0, x) is None
        torch.set_num_threads(1)
        out = fused_forward(t, x, x, 1.0, None)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out, _plain(t, x, x, 1.0, None), rtol=1e-5, atol=1e-5)


_ISAS = ['base', 'avx2', 'avx512']


@pytest.mark.skipif(platform.machine() not in ('x86_64', 'AMD64'),
                    reason='one variant (base) outside x86-64')
@pytest.mark.parametrize('capability, isa', [('avx2', 'avx2'), ('default', 'base')])
def test_the_narrower_instruction_sets_equal_the_products(capability, isa):
    """The variants a CPU without AVX-512 (or AVX2) runs, chosen here by capping PyTorch's
    instruction set as such a CPU would, pass this file's equality tests."""
    if _ISAS.index(isa) > _ISAS.index(kernels_isa()):
        pytest.skip(f'vtseg._C runs its {kernels_isa()} variant here: this CPU (or the '
                    f'PyTorch it runs with) does not run the {isa} one')
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    probe = subprocess.run(
        [sys.executable, '-c', 'from vtseg.models.layers.token_pixel_kernels import '
         'kernels_isa; print(kernels_isa())'], env=env, capture_output=True, text=True)
    assert probe.stdout.strip() == isa, probe.stderr
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', __file__, '-q', '-p', 'no:cacheprovider',
         '-k', 'equals_the_products or sharp_attention or number_of_threads or '
         'training_products'],
        env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert ' passed' in run.stdout, run.stdout[-500:]
    if kernels_threaded():  # else the thread-count tests skip
        assert ' skipped' not in run.stdout, run.stdout[-500:]


def test_without_the_extension_cpu_inference_says_so_once(monkeypatch):
    monkeypatch.setattr(token_pixel_kernels, '_ERROR', 'ImportError: no module vtseg._C')
    monkeypatch.setitem(token_pixel_kernels._warned, 'missing', False)
    x, t = torch.randn(1, 50, 16), torch.randn(1, 4, 16)
    with pytest.warns(UserWarning, match='vtseg._C is not built.*no-build-isolation'):
        assert fused_forward(t, x, x, 1.0, None) is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert fused_forward(t, x, x, 1.0, None) is None  # once
    out = token_pixel_attention(t, x, x, scale=1.0)  # PyTorch's products in its place
    torch.testing.assert_close(out, _plain(t, x, x, 1.0, None))


def _plain(q, k, v, scale, residual):
    return _forward(q, k, v, scale, residual)[0]


def _rows(b, n, c, generator, layout='rows'):
    """(B, N, C) pixels stored one pixel per row, as a channels_last map flattens, or one
    channel per row, as an NCHW map does."""
    if layout == 'channels':
        return torch.randn(b, c, n, generator=generator).transpose(1, 2)
    return torch.randn(b, n, c, generator=generator)


LAYOUTS = pytest.mark.parametrize('layout', ['rows', 'channels'])


# N: one pixel, less than a tile (16), fewer than a row block (64), across the
# 1024-pixel blocks, with and without a last partial tile.
@LAYOUTS
@pytest.mark.parametrize('n', [1, 7, 70, 1025, 2100])
@pytest.mark.parametrize('tokens', [1, 3, 8, 9, 16])
@pytest.mark.parametrize('scale', [1.0, 0.3])
def test_tokens_over_pixels_equals_the_products(n, tokens, scale, layout):
    g = torch.Generator().manual_seed(n * 100 + tokens)
    x = _rows(3, n, 48, g, layout)
    q = torch.randn(1, tokens, 48, generator=g).expand(3, -1, -1)  # filters: batch stride 0
    out = fused_forward(q, x, x, scale, None)
    assert out is not None
    torch.testing.assert_close(out, _plain(q, x, x, scale, None), rtol=1e-5, atol=1e-5)


@LAYOUTS
@pytest.mark.parametrize('n', [17, 32, 300])  # more pixels than tokens; tiles of 16
@pytest.mark.parametrize('tokens', [1, 3, 8, 9, 16])
@pytest.mark.parametrize('residual', ['q', 'apart', None])
def test_pixels_over_tokens_equals_the_products(n, tokens, residual, layout):
    g = torch.Generator().manual_seed(n * 100 + tokens)
    x = _rows(2, n, 32, g, layout)
    k = torch.randn(2, tokens, 32, generator=g)
    v = torch.randn(2, tokens, 48, generator=g)
    res = {'q': None, 'apart': _rows(2, n, 48, g, layout), None: None}[residual]
    if residual == 'q':  # the projector: the pixels are queries and residual
        v = torch.randn(2, tokens, 32, generator=g)
        res = x
    out = fused_forward(x, k, v, 0.7, res)
    assert out is not None
    # written as the pixels are stored
    assert out.transpose(1, 2).is_contiguous() if layout == 'channels' else out.is_contiguous()
    torch.testing.assert_close(out, _plain(x, k, v, 0.7, res), rtol=1e-5, atol=1e-5)


@LAYOUTS
@pytest.mark.parametrize('side', ['tokens', 'pixels'])
def test_sharp_attention(side, layout):
    """Logits hundreds apart: weights underflow to zero as in PyTorch's softmax, and the
    result stays finite. (float32 logits of this size round to about 1e-4, which the
    float64 reference shows in both paths alike.)"""
    g = torch.Generator().manual_seed(0)
    x = _rows(1, 2000, 16, g, layout) * 8
    t = torch.randn(1, 8, 16, generator=g) * 8
    args = (t, x, x, 1.0, None) if side == 'tokens' else (x, t, t, 1.0, x)
    logits = args[0] @ args[1].transpose(1, 2)
    assert (logits.amax(-1) - logits.amin(-1)).median() > 200  # far beyond exp's range
    out = fused_forward(*args)
    assert torch.isfinite(out).all()
    exact = _plain(*(a.double() if torch.is_tensor(a) else a for a in args))
    error = (out.double() - exact).abs().max()
    assert error <= 2 * (_plain(*args).double() - exact).abs().max() + 1e-5


@LAYOUTS
@pytest.mark.skipif(not kernels_threaded(), reason='vtseg._C built without OpenMP: its '
                    'kernels run with one thread only')
def test_results_do_not_depend_on_the_number_of_threads(layout):
    g = torch.Generator().manual_seed(0)
    x = _rows(2, 5001, 32, g, layout)
    t = torch.randn(2, 8, 32, generator=g)
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            outs.append((fused_forward(t, x, x, 1.0, None), fused_forward(x, t, t, 1.0, x),
                         pixel_product(x[..., :8], t, x, channels_major=layout == 'channels')))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_where_the_kernels_do_not_apply():
    g = torch.Generator().manual_seed(0)
    x = _rows(1, 50, 32, g)
    t = torch.randn(1, 8, 32, generator=g)
    assert fused_forward(t.bfloat16(), x.bfloat16(), x.bfloat16(), 1.0, None) is None
    x12, t12 = _rows(1, 50, 12, g), torch.randn(1, 8, 12, generator=g)
    assert fused_forward(t12, x12, x12, 1.0, None) is None  # channels not a multiple of 16
    t17 = torch.randn(1, 17, 32, generator=g)
    assert fused_forward(x, t17, t17, 1.0, x) is None  # more tokens than a vector holds
    assert fused_forward(t, x, x.clone(), 1.0, None) is None  # values apart from keys
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert fused_forward(t, x, x, 1.0, None) is None
    a = torch.randn(1, 50, 8, generator=g)
    assert pixel_product(a, t, x, channels_major=False) is not None
    assert pixel_product(a.double(), t.double(), None, channels_major=False) is None
    assert pixel_product(a, t12, None, channels_major=False) is None  # C not a multiple of 16
    assert pixel_product(torch.randn(1, 50, 17), t17, None, channels_major=False) is None
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert pixel_product(a, t, None, channels_major=False) is None
    # no backward: a product autograd must differentiate (double backward) runs bmm
    assert pixel_product(a.requires_grad_(), t, None, channels_major=False) is None
    with torch.no_grad():
        assert pixel_product(a, t, None, channels_major=False) is not None


def test_the_ops_check_their_arguments():
    t = torch.randn(1, 8, 32)
    with pytest.raises(RuntimeError, match='1 to 16 tokens'):
        torch.ops.vtseg.pixels_over_tokens(torch.randn(1, 50, 32), torch.randn(1, 17, 32),
                                           torch.randn(1, 17, 32), None, 1.0)
    with pytest.raises(RuntimeError, match='channels must be a multiple of 16'):
        torch.ops.vtseg.tokens_over_pixels(torch.randn(1, 8, 24), torch.randn(1, 50, 24), 1.0)
    with pytest.raises(RuntimeError, match='float32'):
        torch.ops.vtseg.tokens_over_pixels(t.double(), torch.randn(1, 50, 32).double(), 1.0)
    with pytest.raises(RuntimeError, match='residual must be'):
        x = torch.randn(1, 50, 32)
        torch.ops.vtseg.pixels_over_tokens(x, t, t, x[:, :49], 1.0)
    a = torch.randn(1, 50, 8)
    with pytest.raises(RuntimeError, match='1 to 16 inner terms'):
        torch.ops.vtseg.pixel_product(torch.randn(1, 50, 17), torch.randn(1, 17, 32), None,
                                      False)
    with pytest.raises(RuntimeError, match='C must be a multiple of 16'):
        torch.ops.vtseg.pixel_product(a, torch.randn(1, 8, 24), None, False)
    with pytest.raises(RuntimeError, match=r'a \(B, N, K\) and b \(B, K, C\)'):
        torch.ops.vtseg.pixel_product(a, torch.randn(1, 7, 32), None, False)
    with pytest.raises(RuntimeError, match='add must be'):
        torch.ops.vtseg.pixel_product(a, t, torch.randn(1, 49, 32), False)


def test_pixels_in_other_strides_run_the_kernels():
    """Pixels stored neither as rows nor as channel rows, or a residual stored otherwise
    than the pixels, still run the kernels (the ops copy them into one layout)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1, 8, 32, generator=g)
    x, nchw = _rows(1, 50, 32, g), _rows(1, 50, 32, g, 'channels')
    strided = torch.randn(1, 50, 64, generator=g)[..., ::2]
    for q, k, v, res in [(nchw, t, t, x), (t, strided, strided, None)]:
        out = fused_forward(q, k, v, 1.0, res)
        assert out is not None
        torch.testing.assert_close(out, _plain(q, k, v, 1.0, res), rtol=1e-5, atol=1e-5)


@LAYOUTS
def test_the_ops_take_pixels_in_any_strides(layout):
    """torch.compile may hand the ops (tagged flexible_layout) pixels in strides other than
    those traced: pixels stored neither way are copied into rows, a residual stored
    otherwise than the pixels into their layout, and the output is stored as the shape
    function says."""
    g = torch.Generator().manual_seed(3)
    x = _rows(2, 50, 32, g, layout)
    k = torch.randn(2, 8, 32, generator=g)
    v = torch.randn(2, 8, 32, generator=g)
    strided = torch.randn(2, 50, 64, generator=g)[..., ::2]  # neither layout
    out = torch.ops.vtseg.tokens_over_pixels(k, strided, 0.5)
    torch.testing.assert_close(out, _plain(k, strided, strided, 0.5, None), rtol=1e-5,
                               atol=1e-5)
    other = _rows(2, 50, 32, g, 'rows' if layout == 'channels' else 'channels')
    other.copy_(torch.randn(2, 50, 32, generator=g))
    for pixels, residual in [(x, other), (strided, x), (strided, None)]:
        out = torch.ops.vtseg.pixels_over_tokens(pixels, k, v, residual, 0.7)
        torch.testing.assert_close(out, _plain(pixels, k, v, 0.7, residual), rtol=1e-5,
                                   atol=1e-5)
        fake = token_pixel_kernels._pixels_over_tokens_fake(pixels, k, v, residual, 0.7)
        assert out.stride() == fake.stride()


def test_training_and_tracing_run_pytorchs_products(monkeypatch):
    """The kernels have no backward, and FLOP counting and ONNX export trace plain ops."""
    calls = []
    monkeypatch.setattr('vtseg.models.layers.token_pixel_attention.fused_forward',
                        lambda *a: calls.append(a) or fused_forward(*a))
    x = torch.randn(1, 40, 16)
    q = torch.randn(1, 4, 16, requires_grad=True)
    token_pixel_attention(q, x, x, scale=1.0).sum().backward()
    assert not calls and q.grad is not None
    with torch.no_grad():
        token_pixel_attention(q, x, x, scale=1.0)
    assert len(calls) == 1
    with torch.no_grad():
        graph = torch.jit.trace(lambda a, b: token_pixel_attention(a, b, b, scale=1.0),
                                (q.detach(), x)).graph
    assert 'vtseg::' not in str(graph) and 'aten::bmm' in str(graph)


def _bmm_product(a, b, add):
    out = torch.bmm(a.double(), b.double())
    return out if add is None else out + add.double()


# N: one pixel, one tile (16) and a partial one, several row blocks (64) and a last tile.
@LAYOUTS
@pytest.mark.parametrize('n', [1, 17, 300])
@pytest.mark.parametrize('terms', [1, 3, 8, 9, 16])
@pytest.mark.parametrize('add', [True, False])
def test_pixel_product_equals_the_products(n, terms, add, layout):
    """The training products over the pixels with a few inner terms: ``add + a b`` written
    in the layout asked for, with ``a`` as the blocks pass it (a transposed view of the
    weights over channel rows, rows otherwise) or stored the other way (copied)."""
    g = torch.Generator().manual_seed(n * 31 + terms)
    cm = layout == 'channels'
    b = torch.randn(2, terms, 48, generator=g)
    d = _rows(2, n, 48, g, layout) if add else None
    for a in (_rows(2, n, terms, g, layout), _rows(2, n, terms, g, 'rows' if cm else
                                                   'channels')):
        out = pixel_product(a, b, d, channels_major=cm)
        assert out is not None and out.stride() == _rows(2, n, 48, g, layout).stride()
        torch.testing.assert_close(out.double(), _bmm_product(a, b, d), rtol=1e-5, atol=1e-5)
    if add:  # an add stored otherwise than the output is copied into its layout
        other = _rows(2, n, 48, g, 'rows' if cm else 'channels')
        out = pixel_product(a, b, other, channels_major=cm)
        torch.testing.assert_close(out.double(), _bmm_product(a, b, other), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last],
                         ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('block', ['tokenizer', 'projector'])
def test_training_products_equal_pytorchs(block, memory_format, monkeypatch):
    """A training step of a block (forward and backward) gives the same output and
    gradients with the kernel as with PyTorch's products, and runs the kernel."""
    from vtseg.models.layers import token_pixel_attention as tpa
    ran = []  # what the kernel returned
    monkeypatch.setattr(tpa, 'pixel_product',
                        lambda *a, **kw: ran.append(pixel_product(*a, **kw)) or ran[-1])
    torch.manual_seed(0)
    m = FilterTokenizer(32, 8, 48) if block == 'tokenizer' else Projector(32, 48)
    x = torch.randn(2, 32, 19, 23).contiguous(memory_format=memory_format)
    tokens = torch.randn(2, 8, 48)
    results = []
    for kernel in (True, False):
        if not kernel:
            monkeypatch.setattr(tpa, 'pixel_product', lambda *a, **kw: None)
        m.zero_grad()
        xi, ti = x.clone().requires_grad_(), tokens.clone().requires_grad_()
        out = m(xi)[0] if block == 'tokenizer' else m(xi, ti)
        out.pow(2).sum().backward()
        grads = [xi.grad] + ([ti.grad] if block == 'projector' else [])
        results.append([out] + grads + [p.grad for p in m.parameters()])
    assert ran and all(r is not None for r in ran)
    assert all(r is not None for r in results[0])
    for with_kernel, with_bmm in zip(*results):
        torch.testing.assert_close(with_kernel, with_bmm, rtol=1e-4, atol=1e-5)
    assert results[0][1].is_contiguous(memory_format=memory_format)  # the map's gradient


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last],
                         ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('block', ['tokenizer', 'projector'])
def test_blocks_equal_the_explicit_path(block, memory_format, monkeypatch):
    ran = []  # what the kernels returned: the blocks' inference runs them
    monkeypatch.setattr('vtseg.models.layers.token_pixel_attention.fused_forward',
                        lambda *a: ran.append(fused_forward(*a)) or ran[-1])
    torch.manual_seed(0)
    m = FilterTokenizer(32, 8, 48) if block == 'tokenizer' else Projector(32, 48)
    x = torch.randn(2, 32, 19, 23).contiguous(memory_format=memory_format)
    args = (x,) if block == 'tokenizer' else (x, torch.randn(2, 8, 48))
    with torch.no_grad():
        fused = m(*args)
        assert len(ran) == 1 and ran[0] is not None
        with explicit_attention(m):
            explicit = m(*args)
    fused, explicit = (fused[0], explicit[0]) if block == 'tokenizer' else (fused, explicit)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    if block == 'projector':
        assert fused.is_contiguous(memory_format=memory_format)


@LAYOUTS
def test_the_ops_shape_functions_match_them(layout):
    """What torch.compile and torch.export see of the ops (their fake implementations)
    matches what they return, strides included."""
    g = torch.Generator().manual_seed(0)
    x = _rows(2, 40, 32, g, layout)
    t = torch.randn(2, 5, 32, generator=g)
    a = x[..., :5]
    cm = layout == 'channels'
    for op, args in [(torch.ops.vtseg.tokens_over_pixels.default, (t, x, 1.0)),
                     (torch.ops.vtseg.pixels_over_tokens.default, (x, t, t, x, 0.5)),
                     (torch.ops.vtseg.pixels_over_tokens.default, (x, t, t, None, 0.5)),
                     (torch.ops.vtseg.pixel_product.default, (a, t, x, cm)),
                     (torch.ops.vtseg.pixel_product.default, (a, t, None, cm))]:
        torch.library.opcheck(op, args, test_utils=('test_schema', 'test_faketensor'))


@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last],
                         ids=['nchw', 'channels_last'])
def test_compiled_model_keeps_the_kernels_in_its_graph(memory_format):
    torch.manual_seed(0)
    m = Projector(32, 48).eval()
    x = torch.randn(1, 32, 9, 11).contiguous(memory_format=memory_format)
    t = torch.randn(1, 8, 48)
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(m)(x, t)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert 'vtseg.pixels_over_tokens' in str(explanation.graphs[0].code)
        torch.testing.assert_close(torch.compile(m)(x, t), m(x, t), rtol=1e-5, atol=1e-5)


def test_compiled_nchw_model_where_inductor_stores_maps_channels_last():
    """TorchInductor may store an NCHW model's convolution outputs channels_last (on CPU
    it does for large convolutions): the compiled VT blocks stay right."""
    from torch._inductor import config as inductor_config

    from vtseg.models import VTFPN
    torch.manual_seed(0)
    channels = [16, 32, 64, 128]
    neck = VTFPN(channels, 32, 4, num_tokens=4, token_channels=64, num_heads=4,
                 norm_cfg=dict(type='BN')).eval()
    feats = [torch.randn(1, c, 37 // s, 37 // s) for c, s in zip(channels, (1, 2, 4, 8))]
    torch._dynamo.reset()
    with torch.no_grad():
        graph = str(torch._dynamo.explain(neck)(feats).graphs[0].code)
    assert 'vtseg.tokens_over_pixels' in graph and 'vtseg.pixels_over_tokens' in graph
    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(force_layout_optimization=True):
        outs = torch.compile(neck)(feats)
        refs = neck(feats)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_compiled_nchw_model_hands_the_ops_its_channels_last_maps():
    """The ops take the maps in the layout TorchInductor stores them in (flexible_layout):
    a compiled NCHW model whose convolution outputs Inductor stores channels_last copies
    no map back to NCHW for them, and needs no more memory than run eagerly (it needed
    1.7x as much while the ops asked for the strides they were traced with)."""
    from torch._inductor import config as inductor_config

    from vtseg.analysis.benchmark import peak_memory
    from vtseg.models import VTFPN
    torch.manual_seed(0)
    channels = [64, 128, 256, 512]
    neck = VTFPN(channels, 64, 4, num_tokens=8, token_channels=128, num_heads=4).eval()
    feats = [torch.randn(1, c, 128 // s, 128 // s) for c, s in zip(channels, (1, 2, 4, 8))]
    torch._dynamo.reset()
    with torch.no_grad(), inductor_config.patch(force_layout_optimization=True):
        compiled = torch.compile(neck)
        outs, refs = compiled(feats), neck(feats)
        eager = peak_memory(lambda: neck(feats))['tensors']
        assert peak_memory(lambda: compiled(feats))['tensors'] <= 1.1 * eager
    for out, ref in zip(outs, refs):
        assert out.stride() == ref.stride()
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
