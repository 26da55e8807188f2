"""Multiply-accumulates and parameters of mmseg models, by part.

Built on :class:`mmengine.analysis.FlopAnalyzer`, which counts one fused multiply-add as
one FLOP (the paper's convention). Softmax and elementwise operators are not counted; the
operators it skipped are reported so a reader knows what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape
from torch import nn

__all__ = ['Complexity', 'model_complexity', 'format_complexity', 'flop_analyzer', 'PARTS',
           'EXTRA_OP_HANDLES']

#: Submodules of an mmseg ``EncoderDecoder`` reported separately.
PARTS = ('backbone', 'neck', 'decode_head')


@dataclass
class Complexity:
    """Costs of one model at one input size. FLOPs are multiply-accumulates."""

    input_shape: Tuple[int, int]
    flops: Dict[str, int]    # '' (whole model) and each part present
    params: Dict[str, int]   # same keys
    unsupported_ops: Dict[str, int] = field(default_factory=dict)

    @property
    def total_flops(self) -> int:
        return self.flops['']

    @property
    def total_params(self) -> int:
        return self.params['']


def _baddbmm_flops(inputs: list, outputs: list) -> int:
    """MACs of ``baddbmm(M, A, B)`` (and its in-place form): ``A @ B`` is (b, n, m) x (b, m, p).

    FlopAnalyzer knows ``bmm`` but not ``baddbmm``, which fused in-place code uses for
    ``X += A @ B``; without this handle that product would silently count zero.
    """
    b, n, m = get_shape(inputs[1])
    p = get_shape(inputs[2])[-1]
    return b * n * m * p


def _sdpa_flops(inputs: list, outputs: list) -> int:
    """MACs of ``scaled_dot_product_attention(q, k, v)``: ``q k^T`` and ``weights v``.

    q (..., N_q, d), k (..., N_k, d), v (..., N_k, d_v) -> (..., N_q, d_v): the same two
    products the explicit path runs as ``matmul`` (the softmax is not counted on either
    path), so a model counts the same MACs on both paths.
    """
    d, n_k, d_v = get_shape(inputs[0])[-1], get_shape(inputs[1])[-2], get_shape(inputs[2])[-1]
    out = get_shape(outputs[0])
    rows = 1
    for s in out[:-1]:  # batch dims x N_q
        rows *= s
    return rows * n_k * (d + d_v)


#: Operators FlopAnalyzer has no handle for but that are matrix products.
EXTRA_OP_HANDLES = {
    'aten::baddbmm': _baddbmm_flops,
    'aten::baddbmm_': _baddbmm_flops,
    'aten::scaled_dot_product_attention': _sdpa_flops,
}


def flop_analyzer(model: nn.Module, inputs) -> FlopAnalyzer:
    """A :class:`FlopAnalyzer` for ``model(*inputs)`` as vtseg counts: with the handles of
    :data:`EXTRA_OP_HANDLES` and without per-operator warnings (the skipped operators are
    available from ``unsupported_ops()``)."""
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.set_op_handle(**EXTRA_OP_HANDLES)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer


def _count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def model_complexity(model: nn.Module, input_shape: Sequence[int],
                     parts: Sequence[str] = PARTS) -> Complexity:
    """Count MACs and parameters of ``model`` for one ``(H, W)`` RGB input.

    ``model`` is called as ``model(inputs)``: an mmseg segmentor runs in ``mode='tensor'``
    (backbone, neck and decode head, no loss, no resizing), a plain module runs as is.

    Args:
        model: the model (set to eval mode here; restored afterwards).
        input_shape: ``(H, W)``.
        parts: names of submodules reported separately (missing ones are skipped).
    """
    if len(input_shape) != 2 or not all(int(s) > 0 for s in input_shape):
        raise ValueError(f'input_shape must be (H, W) with positive sizes, got {input_shape!r}')
    h, w = (int(s) for s in input_shape)
    param = next(model.parameters())
    inputs = torch.zeros(1, 3, h, w, dtype=param.dtype, device=param.device)
    # Restore each submodule's own mode: model.train(flag) would overwrite them all.
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        analyzer = flop_analyzer(model, inputs)
        by_module = analyzer.by_module()
        unsupported = dict(analyzer.unsupported_ops())
    finally:
        for m, training in modes.items():
            m.training = training
    flops = {'': int(by_module[''])}
    params = {'': _count_params(model)}
    for part in parts:
        module = getattr(model, part, None)
        if isinstance(module, nn.Module):
            flops[part] = int(by_module[part])
            params[part] = _count_params(module)
    return Complexity((h, w), flops, params, unsupported)


def format_complexity(result: Complexity) -> str:
    """A plain-text table of MACs and parameters per part, then the uncounted operators."""
    h, w = result.input_shape
    lines = [f'input 1x3x{h}x{w}; FLOPs are multiply-accumulates (1 MAC = 1 FLOP)',
             f'{"part":<14}{"GFLOPs":>12}{"params":>14}{"params (M)":>12}']
    for part in [p for p in result.flops if p] + ['']:
        flops, params = result.flops[part], result.params[part]
        lines.append(f'{part or "total":<14}{flops / 1e9:>12.3f}{params:>14,}'
                     f'{params / 1e6:>12.3f}')
    if result.unsupported_ops:
        ops = ', '.join(f'{op} ({n}x)' for op, n in sorted(result.unsupported_ops.items()))
        lines.append(f'Not counted by FlopAnalyzer: {ops}.')
    else:
        lines.append('Every operator had a FlopAnalyzer handle (elementwise ones count zero).')
    return '\n'.join(lines)
