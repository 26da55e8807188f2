"""Small helpers shared by the VT blocks."""
import torch
from torch import Tensor


def at_least_float32(t: Tensor) -> Tensor:
    """float16/bfloat16 -> float32; float32 and float64 unchanged.

    Softmaxes over thousands of pixels run in at least float32 so that low-precision
    training neither overflows nor rounds the small weights to zero.
    """
    return t.to(torch.promote_types(t.dtype, torch.float32))


def check_positive_int(owner: str, **values) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive integer."""
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f'{owner}: {name} must be a positive integer, got {value!r}')
