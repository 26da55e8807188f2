"""Linear layers applied to a few rows, as a VT block's token side applies them.

Every ``nn.Linear`` of a VT block acts on tokens: a few rows (B x L: 8 per level in VT-FPN,
32 in its transformer) against a weight of up to C_T x C_T (4 MiB at C_T = 1024) that is
seldom still in cache. A GEMM library's kernels are built for many rows: they pack the
weight in blocks before multiplying, which for a few rows costs more than the
multiply-adds. ``torch.ops.vtseg.few_rows_linear`` (``vtseg/csrc/few_rows_linear.cpp``)
reads the weight once, row after row as it is stored, and multiplies each of its rows with
every input row while it is in registers; each output is one dot product summed in a
fixed order, whatever the number of threads.

:func:`use_few_rows_linear`, a step of :func:`~vtseg.deploy.optimize_for_inference`,
turns a model's ``nn.Linear`` layers into :class:`FewRowsLinear`: the same layer (same
parameters, state dict and hooks) that calls the kernel where it applies (no gradient
needed, CPU float32, ``in_features`` a multiple of 16, at most :data:`MAX_ROWS` rows) and
``nn.Linear``'s own product elsewhere (training, GPU, other dtypes, autocast, and the traces
of FLOP counting and ONNX export, so counted MACs and exported graphs do not change).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers.token_pixel_kernels import (
    CHANNEL_MULTIPLE,
    kernels_available,
    kernels_run_on,
)

__all__ = ['FewRowsLinear', 'MAX_ROWS', 'use_few_rows_linear']

#: The most rows the kernel takes: it reads the input rows again for every block of 16
#: weight rows, from the core's cache (64 rows of 1024 floats are 256 KiB).
MAX_ROWS = 64

if kernels_available():
    @torch.library.register_fake('vtseg::few_rows_linear')
    def _few_rows_linear_fake(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return x.new_empty(*x.shape[:-1], w.shape[0])


def _applies(layer: nn.Linear, x: Tensor) -> bool:
    params = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
    if not kernels_run_on([x, *params]):  # first: no shape is read while tracing
        return False  # (nor where autograd would record: the kernel has no backward)
    return layer.in_features % CHANNEL_MULTIPLE == 0 \
        and 0 < x.numel() <= MAX_ROWS * layer.in_features


def _kernel(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.vtseg.few_rows_linear(x, weight, bias)


class FewRowsLinear(nn.Linear):
    """``nn.Linear`` that multiplies a few rows with ``torch.ops.vtseg.few_rows_linear``
    where it applies (see the module docstring); made by :func:`use_few_rows_linear`."""

    def forward(self, x: Tensor) -> Tensor:
        if _applies(self, x):
            return _kernel(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_few_rows_linear(model: nn.Module) -> nn.Module:
    """Make every ``nn.Linear`` of ``model`` (exactly that class, not subclasses, whose
    owners may read their weights directly) a :class:`FewRowsLinear`, in place; returns
    ``model``. Parameters, buffers, state dict keys and hooks stay as they are."""
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = FewRowsLinear
    return model
