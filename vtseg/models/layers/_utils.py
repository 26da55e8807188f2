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


#: A single image's pixel axis is cut into at most this many column blocks (see below).
MAX_PIXEL_BLOCKS = 8
#: ... each of at least this many pixels.
MIN_BLOCK_PIXELS = 512


def _pixel_blocks(batch: int, pixels: int) -> int:
    """How many column blocks the products below cut the pixel axis into (1 = none).

    Only for one image: with a batch, the batch already spreads the GEMMs over threads,
    and blocks of several images cannot be one strided view.
    """
    if batch != 1:
        return 1
    if torch.jit.is_tracing():
        # A trace (ONNX export) would freeze k, and the size test behind it, at the example
        # input's size; the plain product is right for every size of a dynamic-shape graph.
        return 1
    for k in range(MAX_PIXEL_BLOCKS, 1, -1):
        if pixels % k == 0 and pixels // k >= MIN_BLOCK_PIXELS:
            return k
    return 1


def rows_times_pixels(rows: Tensor, x: Tensor) -> Tensor:
    """``rows @ x`` for a few rows (B, M, C) and a feature map (B, C, N): (B, M, N).

    With M = L tokens (8) and N ~ 60k pixels, MKL runs this skinny GEMM on one thread. For
    one image the pixel axis is viewed as k column blocks, (C, N) -> (k, C, N / k), a batch
    of k GEMMs that all threads share (about 2x faster on 2 cores at 800x1216). The blocks
    are views; only the small (M, N) result is copied back in order. Same products, same
    multiply-accumulate count.
    """
    b, _, n = x.shape
    k = _pixel_blocks(b, n)
    if k == 1:
        return torch.matmul(rows, x)
    blocks = x[0].unflatten(1, (k, n // k)).transpose(0, 1)  # (C, k, N/k) -> (k, C, N/k)
    out = torch.bmm(rows[0].expand(k, -1, -1), blocks)  # (k, M, N/k)
    return out.transpose(0, 1).reshape(1, rows.shape[1], n)  # (1, M, N)


def weights_times_pixels(weights: Tensor, x: Tensor) -> Tensor:
    """``weights @ x^T`` for pixel weights (B, M, N) and a feature map (B, C, N): (B, M, C).

    The weighted pooling ``T = A^T X`` of the tokenizers. For one image the pixel (sum)
    axis is split into k blocks whose partial (M, C) products are added (split-K), so all
    threads share the GEMM (see :func:`rows_times_pixels`); only the order of the sum over
    pixels changes.
    """
    b, _, n = x.shape
    k = _pixel_blocks(b, n)
    if k == 1:
        return torch.matmul(weights, x.transpose(1, 2))
    w_blocks = weights[0].unflatten(1, (k, n // k)).transpose(0, 1)  # (k, M, N/k)
    x_blocks = x[0].unflatten(1, (k, n // k)).permute(1, 2, 0)  # (k, N/k, C)
    return torch.bmm(w_blocks, x_blocks).sum(0, keepdim=True)  # (1, M, C)
