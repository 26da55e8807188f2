"""Make modules that a trace would freeze at the example size traceable, for the export.

mmseg's ``Upsample`` (in ``FPNHead``'s scale heads) computes its output size with
``int(t * scale_factor)``; a trace records that as a constant, so a dynamic-shape graph
would upsample to the example's size at every size (the head's next ``resize`` hides the
error in the shape, not in the values). During :func:`traceable`, each such module
upsamples by its ``scale_factor`` instead: the same output size and, for integer factors,
the same coordinates, so the same values; other factors recompute the scale from the
sizes, as mmseg's size-based call does.
"""
from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ['traceable']


def _upsample_by_factor(self, x: Tensor) -> Tensor:
    factors = self.scale_factor if isinstance(self.scale_factor, tuple) else \
        (self.scale_factor, self.scale_factor)
    integer = all(float(f).is_integer() for f in factors)
    return F.interpolate(x, scale_factor=self.scale_factor, mode=self.mode,
                         align_corners=self.align_corners,
                         recompute_scale_factor=None if integer else True)


@contextmanager
def traceable(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s size-freezing modules trace to shape-generic ops."""
    from mmseg.models.utils import Upsample  # noqa: PLC0415

    patched = [m for m in model.modules()
               if isinstance(m, Upsample) and not m.size and m.scale_factor]
    for m in patched:
        m.forward = types.MethodType(_upsample_by_factor, m)
    try:
        yield model
    finally:
        for m in patched:
            del m.forward  # back to the class's forward
