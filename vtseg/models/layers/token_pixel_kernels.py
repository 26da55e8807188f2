"""vtseg's fused CPU kernels of the attention between a few tokens and a map's pixels.

:func:`~vtseg.models.layers.token_pixel_attention.token_pixel_attention` evaluates that
attention as GEMMs over the pixel axis; each GEMM reads the whole map for a few
multiply-adds per pixel, so on a CPU the tokenizer (logits, softmax, pooling) and the
projector (logits, softmax, read-out with its residual) are several passes over memory.
``vtseg._C`` (C++, ``vtseg/csrc/token_pixel_attention.cpp``) does each in one pass over
the pixels:

* ``torch.ops.vtseg.tokens_over_pixels(q, x, scale)``: ``softmax_N(q x^T scale) x``, an
  online softmax over fixed blocks of pixels merged in a fixed order;
* ``torch.ops.vtseg.pixels_over_tokens(x, k, v, residual, scale)``:
  ``residual + softmax_L(x k^T scale) v``, pixel by pixel, written in the layout of the
  pixels;
* ``torch.ops.vtseg.pixel_product(a, b, add, channels_major)``: ``add + a b`` for ``a``
  (B, N, K) over the pixels with a few inner terms (K <= 16: the tokens, or twice them)
  and ``b`` (B, K, C), written one pixel or one channel per row. These are the products
  of the attention's training (:class:`~.token_pixel_attention._TokenPixelAttention`),
  where a GEMM library handles an inner dimension of 8 or 16 poorly.

Each reads a map in the order it is stored: a channels_last map a pixel (a row of C
channels) at a time, an NCHW map 16 pixels at a time (one vector per channel).

They are the same products as the other paths, in float32; like
:func:`~vtseg.models.layers.token_pixel_attention._softmax` they add no weight below the
smallest normal float. They are compiled for AVX-512, AVX2 + FMA and the baseline
instruction set and pick the widest that the CPU has and PyTorch uses, at run time
(:func:`kernels_isa`), so no choice in them depends on the machine beyond that; their
results do not depend on the number of threads. A build without OpenMP runs them on one
thread, and they are used only where PyTorch has one (:func:`kernels_threaded`).

:func:`fused_forward` uses them where they apply (inference on CPU float32 tensors, channel
counts that are multiples of 16, at most 16 tokens) and returns ``None`` elsewhere. The ops
read pixels stored as rows or channel rows (channels_last or NCHW maps) as they are and
copy any other strides into rows; they are registered with fake (shape) implementations,
so :func:`torch.compile` keeps them in its graph.
Tracing (FLOP counting, ONNX export) never uses them, so counted MACs and exported graphs
are those of the plain products.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ['kernels_available', 'kernels_error', 'kernels_isa', 'kernels_threaded',
           'kernels_run_on', 'fused_forward', 'pixel_product']

try:
    from ... import _C  # noqa: F401  (registers torch.ops.vtseg)
    _ERROR: Optional[str] = None
    _THREADED = _C.threaded()
except ImportError as e:  # built without the extension (see setup.py)
    _ERROR = f'{type(e).__name__}: {e}'
    _THREADED = False


def kernels_available() -> bool:
    """Whether ``vtseg._C`` was built and loaded."""
    return _ERROR is None


def kernels_error() -> Optional[str]:
    """Why ``vtseg._C`` could not be loaded, or ``None``."""
    return _ERROR


def kernels_isa() -> Optional[str]:
    """The instruction set the kernels run with (``'avx512'``, ``'avx2'`` or ``'base'``),
    or ``None`` without ``vtseg._C``. It is the widest that both the CPU and PyTorch use:
    ``ATEN_CPU_CAPABILITY=avx2`` (or ``default``) caps it as it caps PyTorch's kernels."""
    return _C.isa() if _ERROR is None else None


def kernels_threaded() -> Optional[bool]:
    """Whether the kernels run on PyTorch's threads, or ``None`` without ``vtseg._C``.

    ``False`` for a build without OpenMP (a compiler without ``-fopenmp``, such as Apple's
    clang: ``setup.py`` then builds without it) against a PyTorch whose threads are
    OpenMP's. Such kernels would run on one thread, so where PyTorch has more the VT blocks
    run its threaded products instead (:func:`kernels_run_on`)."""
    return _THREADED if _ERROR is None else None


def _layout(t: Tensor) -> Optional[str]:
    """How (B, N, C) pixels are stored: ``'rows'``, one pixel per row (a channels_last
    map), ``'channels'``, one channel per row (an NCHW map), or ``None`` (neither)."""
    n, c = t.shape[-2:]
    if t.stride(-1) == 1 and (n == 1 or t.stride(-2) == c):
        return 'rows'
    if t.stride(-2) == 1 and t.stride(-1) >= n:
        return 'channels'
    return None


# The ops' shape functions. TorchInductor's cache of compiled graphs does not see them:
# an op whose output shape or layout changes needs a new name, or stale compiled graphs
# assert the old one.
if _ERROR is None:
    @torch.library.register_fake('vtseg::tokens_over_pixels')
    def _tokens_over_pixels_fake(q: Tensor, x: Tensor, scale: float) -> Tensor:
        return q.new_empty(q.shape[0], q.shape[1], x.shape[2])

    @torch.library.register_fake('vtseg::pixels_over_tokens')
    def _pixels_over_tokens_fake(x: Tensor, k: Tensor, v: Tensor,
                                 residual: Optional[Tensor], scale: float) -> Tensor:
        b, n, cv = x.shape[0], x.shape[1], v.shape[2]
        if _layout(x) == 'channels':  # written as the pixels are stored
            return x.new_empty(b, cv, n).transpose(1, 2)
        return x.new_empty(b, n, cv)

    @torch.library.register_fake('vtseg::pixel_product')
    def _pixel_product_fake(a: Tensor, b: Tensor, add: Optional[Tensor],
                            channels_major: bool) -> Tensor:
        if channels_major:
            return a.new_empty(a.shape[0], b.shape[2], a.shape[1]).transpose(1, 2)
        return a.new_empty(a.shape[0], a.shape[1], b.shape[2])

#: The kernels hold a pixel's logits in 16 lanes (tokens padded to 8 or 16) and read
#: channels in vectors of up to 16 floats.
MAX_TOKENS = 16
CHANNEL_MULTIPLE = 16

_warned = {'missing': False, 'unthreaded': False}


@torch.compiler.assume_constant_result  # read when a graph is traced, not on every call
def _pytorch_threads() -> int:
    return torch.get_num_threads()


def _usable(device: torch.device) -> bool:
    """The kernels are loaded, can use PyTorch's threads (or it has one), and no trace
    (FLOP counting, ONNX export) is recording; says once when they are missing or
    unthreaded where they would run."""
    if _ERROR is not None:
        if device.type == 'cpu' and not _warned['missing']:
            _warned['missing'] = True
            warnings.warn(f'vtseg._C is not built ({_ERROR}): the VT blocks run PyTorch\'s '
                          'products on CPU, several times slower. Build it with `pip '
                          'install --no-build-isolation -e .` in an environment that has '
                          'torch and a C++ compiler.', stacklevel=3)
        return False
    if not _THREADED and _pytorch_threads() > 1:
        if device.type == 'cpu' and not _warned['unthreaded']:
            _warned['unthreaded'] = True
            warnings.warn('vtseg._C was built without OpenMP (its compiler had no '
                          '-fopenmp), so its kernels would run on one of PyTorch\'s '
                          f'{_pytorch_threads()} threads: the VT blocks run PyTorch\'s '
                          'threaded products on CPU instead. Rebuild it with a compiler '
                          'that has OpenMP (GCC, or clang with libomp) for the fused '
                          'kernels.', stacklevel=3)
        return False
    return not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()


def kernels_run_on(tensors: Sequence[Tensor]) -> bool:
    """Whether ``vtseg._C``'s kernels may take these tensors: the extension is loaded, no
    trace (FLOP counting, ONNX export) is recording, all are CPU float32 outside autocast
    (products run in the autocast dtype there), and autograd records nothing through them
    (the kernels have no backward). Says once when the extension is missing where it
    would run."""
    if not _usable(tensors[0].device):
        return False
    if any(t.device.type != 'cpu' or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not torch.is_autocast_enabled('cpu')


def _fits(pixels, tokens) -> bool:
    """At most MAX_TOKENS tokens, channels a multiple of CHANNEL_MULTIPLE. Any strides do:
    the ops read rows and channel rows as they are and copy other layouts into rows."""
    return (1 <= tokens.shape[1] <= MAX_TOKENS
            and all(p.shape[-1] % CHANNEL_MULTIPLE == 0 for p in pixels))


def fused_forward(q: Tensor, k: Tensor, v: Tensor, scale: float,
                  residual: Optional[Tensor]) -> Optional[Tensor]:
    """``residual + softmax(q k^T scale) v`` by ``vtseg._C`` for (B, n, c) tensors (one
    side a few tokens, the other a map's pixels), or ``None`` where the kernels do not
    apply. Call it without gradients: the kernels have no backward."""
    if not kernels_run_on([t for t in (q, k, v, residual) if t is not None]):
        return None
    if q.shape[1] < k.shape[1]:  # tokenizers: a few queries over the pixels, v is k
        if v is not k or residual is not None or not _fits([k], q):
            return None
        return torch.ops.vtseg.tokens_over_pixels(q, k, scale)
    pixels = [q] if residual is None else [q, residual]
    if not _fits(pixels, k) or v.shape[-1] % CHANNEL_MULTIPLE:
        return None
    return torch.ops.vtseg.pixels_over_tokens(q, k, v, residual, scale)


def pixel_product(a: Tensor, b: Tensor, add: Optional[Tensor], *,
                  channels_major: bool) -> Optional[Tensor]:
    """``add + a b`` by ``vtseg._C`` for ``a`` (B, N, K) over a map's pixels and ``b``
    (B, K, C), written one pixel per row, or one channel per row when ``channels_major``;
    ``None`` where the kernel does not apply: more than MAX_TOKENS inner terms, C not a
    multiple of CHANNEL_MULTIPLE, or a product autograd would have to differentiate
    (:func:`kernels_run_on`)."""
    tensors = [a, b] if add is None else [a, b, add]
    if not kernels_run_on(tensors) or not 1 <= a.shape[-1] <= MAX_TOKENS \
            or b.shape[-1] % CHANNEL_MULTIPLE:
        return None
    return torch.ops.vtseg.pixel_product(a, b, add, channels_major)
