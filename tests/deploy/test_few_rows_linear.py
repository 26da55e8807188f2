"""The few-rows linear layer (vtseg.deploy.few_rows_linear): its kernel against nn.Linear's
product, where it applies, and the optimisation step that makes layers use it."""
import os
import platform
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vtseg.deploy import FewRowsLinear, optimize_for_inference, use_few_rows_linear
from vtseg.deploy import few_rows_linear as frl
from vtseg.models import VTFPN
from vtseg.models.layers import token_pixel_kernels
from vtseg.models.layers.token_pixel_kernels import kernels_isa

pytestmark = pytest.mark.skipif(not frl.kernels_available(), reason='vtseg._C is not built')


@pytest.fixture
def calls(monkeypatch):
    """The inputs the kernel was called with."""
    seen = []
    op = torch.ops.vtseg.few_rows_linear

    def spy(x, w, b):
        seen.append(tuple(x.shape))
        return op(x, w, b)
    monkeypatch.setattr(frl, '_kernel', spy)
    return seen


@pytest.mark.parametrize('rows', [1, 7, 8, 9, 33, 64])
@pytest.mark.parametrize('in_features, out_features', [(16, 1), (48, 17), (32, 19), (272, 42)])
@pytest.mark.parametrize('bias', [True, False])
def test_kernel_equals_the_product(rows, in_features, out_features, bias):
    g = torch.Generator().manual_seed(rows * 1000 + out_features)
    x = torch.randn(rows, in_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    out = torch.ops.vtseg.few_rows_linear(x, w, b)
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5 * in_features)


def test_kernel_takes_any_leading_shape_and_strides():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 32, 5, generator=g).transpose(1, 2)  # (3, 5, 32), not contiguous
    w = torch.randn(64, 48, generator=g)[:, :32]  # rows of stride 48
    out = torch.ops.vtseg.few_rows_linear(x, w, None)
    assert out.shape == (3, 5, 64)
    torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-4)
    x16 = torch.randn(16, 48, generator=g)[:, :32]  # whole passes of rows, of stride 48
    torch.testing.assert_close(torch.ops.vtseg.few_rows_linear(x16, w, None), F.linear(x16, w),
                               rtol=1e-5, atol=1e-4)


def test_results_do_not_depend_on_the_number_of_threads():
    g = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(32, 256, generator=g), torch.randn(100, 256, generator=g), None
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.vtseg.few_rows_linear(x, w, b)
        torch.set_num_threads(max(2, threads))
        many = torch.ops.vtseg.few_rows_linear(x, w, b)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_kernel_checks_its_arguments():
    x, w = torch.randn(4, 32), torch.randn(8, 32)
    with pytest.raises(RuntimeError, match='multiple of 16'):
        torch.ops.vtseg.few_rows_linear(torch.randn(4, 24), torch.randn(8, 24), None)
    with pytest.raises(RuntimeError, match='float32'):
        torch.ops.vtseg.few_rows_linear(x.double(), w.double(), None)
    with pytest.raises(RuntimeError, match=r'x \(\.\.\., K\) and w \(N, K\)'):
        torch.ops.vtseg.few_rows_linear(x, torch.randn(8, 16), None)
    with pytest.raises(RuntimeError, match=r'b must be \(N,\)'):
        torch.ops.vtseg.few_rows_linear(x, w, torch.randn(7))


@pytest.mark.skipif(platform.machine() not in ('x86_64', 'AMD64'),
                    reason='one variant (base) outside x86-64')
@pytest.mark.parametrize('capability, isa', [('avx2', 'avx2'), ('default', 'base')])
def test_the_narrower_instruction_sets_equal_the_product(capability, isa):
    """The variants of CPUs without AVX-512 (or AVX2), chosen by capping PyTorch's."""
    order = ['base', 'avx2', 'avx512']
    if order.index(isa) > order.index(kernels_isa()):
        pytest.skip(f'vtseg._C runs its {kernels_isa()} variant here: this CPU (or the '
                    f'PyTorch it runs with) does not run the {isa} one')
    run = subprocess.run(
        [sys.executable, '-m', 'pytest', __file__, '-q', '-p', 'no:cacheprovider',
         '-k', 'equals_the_product or number_of_threads'],
        env=dict(os.environ, ATEN_CPU_CAPABILITY=capability), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert ' passed' in run.stdout and ' skipped' not in run.stdout, run.stdout[-500:]


def _layer(in_features=32, out_features=24, bias=True):
    torch.manual_seed(0)
    return use_few_rows_linear(nn.Linear(in_features, out_features, bias=bias))


def test_layer_runs_the_kernel_at_inference(calls):
    layer = _layer()
    assert type(layer) is FewRowsLinear
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        out = layer(x)
    assert calls == [(2, 8, 32)]
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize('case', ['grad', 'rows', 'in_features', 'float64', 'autocast',
                                  'trace', 'no_extension'])
def test_layer_runs_nn_linear_where_the_kernel_does_not_apply(case, calls, monkeypatch):
    layer = _layer(in_features=24 if case == 'in_features' else 32)
    x = torch.randn(frl.MAX_ROWS + 1 if case == 'rows' else 4, layer.in_features)
    if case == 'float64':
        layer, x = layer.double(), x.double()
    if case == 'no_extension':
        monkeypatch.setattr(token_pixel_kernels, '_ERROR', 'ImportError: no module vtseg._C')
        monkeypatch.setitem(token_pixel_kernels._warned, 'missing', True)
    if case == 'grad':  # training: the kernel has no backward
        out = layer(x)
        out.sum().backward()
        assert layer.weight.grad is not None
    elif case == 'autocast':
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            out = layer(x)
        assert out.dtype == torch.bfloat16
    elif case == 'trace':  # FLOP counting and ONNX export trace nn.Linear's product
        with torch.no_grad():
            traced = torch.jit.trace(layer, x, check_trace=False)
        assert 'aten::linear' in str(traced.inlined_graph)
        out = traced(x)
    else:
        with torch.no_grad():
            out = layer(x)
    assert calls == []
    if case != 'autocast':
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias))


def test_use_few_rows_linear_keeps_parameters_state_dict_and_hooks():
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 32, bias=False))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    use_few_rows_linear(model)
    assert [type(m) for m in model] == [FewRowsLinear, nn.ReLU, FewRowsLinear]
    assert list(model.parameters()) == params
    assert model.state_dict().keys() == before.keys()
    with torch.no_grad():
        model(torch.randn(3, 32))
    assert seen == [(3, 16)]


def test_subclasses_of_linear_are_left_alone():
    """nn.MultiheadAttention reads its out_proj (a Linear subclass) weights directly."""
    mha = nn.MultiheadAttention(32, 4)
    use_few_rows_linear(mha)
    assert type(mha.out_proj) is not FewRowsLinear


def _neck():
    torch.manual_seed(0)
    return VTFPN([16, 32, 48, 64], 32, 4, num_tokens=4, token_channels=48, num_heads=4,
                 norm_cfg=dict(type='BN')).eval()


def _feats():
    torch.manual_seed(1)
    return [torch.randn(2, c, 40 // s, 36 // s) for c, s in zip([16, 32, 48, 64], (1, 2, 4, 8))]


def test_optimisation_step_makes_every_token_layer_use_the_kernel(calls):
    neck, feats = _neck(), _feats()
    plain = optimize_for_inference(neck, few_rows_linear=False)
    fast = optimize_for_inference(neck)
    assert not any(isinstance(m, FewRowsLinear) for m in plain.modules())
    layers = [m for m in fast.modules() if isinstance(m, nn.Linear)]
    assert layers and all(type(m) is FewRowsLinear for m in layers)
    with torch.no_grad():
        ref, out = plain(feats), fast(feats)
    # tokenizers' token_proj (4), transformer key, query, ffn (4), projectors' key, value (8)
    assert len(calls) == 16
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_optimised_neck_compiles_without_graph_breaks(calls):
    fast, feats = optimize_for_inference(_neck()), _feats()
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(fast)(feats)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert 'vtseg.few_rows_linear' in str(explanation.graphs[0].code)
        compiled = torch.compile(fast)(feats)
        eager = fast(feats)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
