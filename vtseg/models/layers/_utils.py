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


def flatten_pixels(x: Tensor) -> Tensor:
    """A feature map as a sequence of pixels, the layout attention wants.

    A view when ``x`` is channels_last (NHWC in memory), a copy otherwise.

    Shape:
        - x: (B, C, H, W) -> (B, N, C), N = H * W
    """
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, H, W, C) -> (B, N, C)


def unflatten_pixels(pixels: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`flatten_pixels`: a channels_last (B, C, H, W) view, no copy.

    Shape:
        - pixels: (B, N, C) -> (B, C, H, W)
    """
    b, _, c = pixels.shape
    return pixels.reshape(b, height, width, c).permute(0, 3, 1, 2)
