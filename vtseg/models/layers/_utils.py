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
    """A feature map as a sequence of pixels, the layout attention wants: a view, no copy.

    For a channels_last map (NHWC in memory) the view is contiguous, one pixel per row;
    for an NCHW map it is the transpose of a contiguous (B, C, N), one channel per row in
    memory (``is_channels_major``). :func:`~vtseg.models.layers.attention.attention` reads
    either in its stored order.

    Shape:
        - x: (B, C, H, W) -> (B, N, C), N = H * W
    """
    return x.flatten(2).transpose(1, 2)  # (B, C, N) -> (B, N, C)


def is_channels_major(pixels: Tensor) -> bool:
    """Whether a (..., N, C) pixel sequence is stored channel by channel (from NCHW)."""
    return pixels.stride(-2) == 1 and pixels.stride(-1) != 1


def unflatten_pixels(pixels: Tensor, height: int, width: int) -> Tensor:
    """Inverse of :func:`flatten_pixels`, a view in the memory format the pixels are stored
    in: channels_last for one pixel per row, NCHW for one channel per row.

    Shape:
        - pixels: (B, N, C) -> (B, C, H, W)
    """
    b, _, c = pixels.shape
    return pixels.transpose(1, 2).reshape(b, c, height, width)
