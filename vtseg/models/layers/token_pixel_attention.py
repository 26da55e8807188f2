"""The fused path of attention between a few tokens and a whole feature map.

The tokenizers (L queries over N pixels) and the projector (N pixels over L keys) relate
a handful of tokens to tens of thousands of pixels. Their attention is two GEMMs over the
long pixel axis, with (L, N) weights no larger than L channels of the map, so it is
written here with ``bmm``/``baddbmm``, as :func:`token_pixel_attention`, with a backward
of its own (:class:`_TokenPixelAttention`). Both are the same products as the explicit
path of :func:`~vtseg.models.layers.attention.attention`, in an order chosen by the
shapes and memory layouts, never by the machine:

* every product reads a pixel tensor in the order it is stored, one pixel per row
  (channels_last) or one channel per row (NCHW, see
  :func:`~vtseg.models.layers._utils.flatten_pixels`), and writes a pixel-sized result in
  the layout of the map it belongs to;
* the gradient of the few tokens is a reduction over the pixels written as ``(L, N) x (N,
  C)``. (Autograd of ``bmm`` forms it as ``(C, N) x (N, L)``, an orientation MKL runs
  several times slower.)
* the gradients that flow back into a map are written in one pass: the residual's
  gradient is the ``C`` of a ``baddbmm``, and when the keys and values are the same map
  (the tokenizers) their two gradients are one product with ``2 L`` inner terms;
* the weights hold no subnormal numbers (see :func:`_softmax`).

At inference on a CPU, float32 maps (NCHW or channels_last) go to the fused kernels of
:mod:`~vtseg.models.layers.token_pixel_kernels` instead, which do the products of each
block in one pass over the pixels; in training, the products over the pixels whose inner
dimension is a few tokens (:func:`_pixel_product`) go to its ``pixel_product``.

Shape shorthand: B batch, L tokens, N pixels, d query/key width, d_v value width.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import at_least_float32, is_channels_major
from .token_pixel_kernels import fused_forward, pixel_product

__all__ = ['token_pixel_attention']


def token_pixel_attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float,
                          residual: Optional[Tensor] = None) -> Tensor:
    """``residual + softmax(q k^T * scale) v`` where either the queries or the keys are a
    few tokens and the other side is a map's pixels.

    Args:
        q: queries (B..., N_q, d).
        k: keys (B..., N_k, d).
        v: values (B..., N_k, d_v); may be ``k`` itself (the tokenizers).
        scale: logit scale.
        residual: added to the output (B..., N_q, d_v), may be ``q`` itself (the
            projector), or ``None``.

    Returns:
        (B..., N_q, d_v); for pixel queries in the memory layout of ``residual`` (of
        ``q`` without one).
    """
    v_is_k, residual_is_q = v is k, residual is q
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q3, k3 = _flat(q, batch), _flat(k, batch)
    v3 = None if v_is_k else _flat(v, batch)
    res3 = None if residual is None or residual_is_q else _flat(residual, batch)
    tensors = [t for t in (q, k, v, residual) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors) \
            and not torch.jit.is_tracing():
        out = _TokenPixelAttention.apply(q3, k3, v3, res3, scale, v_is_k, residual_is_q)
    else:  # inference, or a trace (FLOP counting, ONNX export) that records plain ops
        v3, res3 = k3 if v_is_k else v3, q3 if residual_is_q else res3
        out = fused_forward(q3, k3, v3, scale, res3)  # one pass over the pixels on CPU
        if out is None:
            out = _forward(q3, k3, v3, scale, res3)[0]
    return out.view(*batch, *out.shape[-2:])


def _flat(t: Tensor, batch: torch.Size) -> Tensor:
    """(B..., n, c), broadcast to ``batch``, -> (prod(batch), n, c); a view for the tensors
    the VT blocks pass."""
    return t.expand(*batch, *t.shape[-2:]).reshape(-1, *t.shape[-2:])


def _softmax(logits: Tensor, scale: float, dim: int) -> Tensor:
    """Weights in at least float32: over tens of thousands of pixels fp16 and bf16 would
    overflow or round the small weights to zero.

    Weights below the dtype's smallest normal number (float32: 1.2e-38) are set to zero.
    Such subnormal weights come with sharp attention (a logit more than about 87 below
    its row's largest) and add nothing representable to the products, but CPUs multiply
    subnormal operands many times slower, and the GEMMs over the pixels read every one.
    """
    if scale != 1:
        logits = logits * scale
    weights = at_least_float32(logits).softmax(dim)
    tiny = torch.finfo(weights.dtype).tiny
    if torch.onnx.is_in_onnx_export():  # ONNX has no threshold other than 0
        return weights.masked_fill(weights < tiny, 0)
    return F.threshold_(weights, tiny, 0.0)  # one pass; NaN stays NaN


def _pixel_product(a: Tensor, b: Tensor, *, channels_major: bool,
                   add: Optional[Tensor] = None) -> Tensor:
    """``add + a b`` for ``a`` (B, N, K) over N pixels and ``b`` (B, K, C), written one
    pixel per row, or one channel per row when ``channels_major``. K is a few tokens: on
    CPU float32 ``vtseg._C`` writes it in one pass over the map (:func:`pixel_product`)."""
    out = pixel_product(a, b, add, channels_major=channels_major)
    if out is not None:
        return out
    if channels_major:  # out^T = add^T + b^T a^T: (B, C, N), contiguous
        a_t, b_t = a.transpose(1, 2), b.transpose(1, 2)
        out_t = (torch.bmm(b_t, a_t) if add is None
                 else torch.baddbmm(add.transpose(1, 2), b_t, a_t))
        return out_t.transpose(1, 2)
    return torch.bmm(a, b) if add is None else torch.baddbmm(add, a, b)


def _pixels_by_tokens(pixels: Tensor, tokens: Tensor) -> Tensor:
    """``pixels tokens^T``, (B, N, c) x (B, L, c) -> (B, N, L), the pixels read as stored."""
    if is_channels_major(pixels):  # (tokens pixels^T)^T, pixels^T contiguous
        return torch.bmm(tokens, pixels.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(pixels, tokens.transpose(1, 2))


def _forward(q: Tensor, k: Tensor, v: Tensor, scale: float,
             residual: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The output and the float32 weights, (B, N_q, N_k) (possibly a transposed view)."""
    if q.shape[1] < k.shape[1]:  # a few queries over the pixels (tokenizers)
        weights = _softmax(_pixels_by_tokens(k, q).transpose(1, 2), scale, -1)  # (B, L, N)
        out = torch.bmm(weights.to(v.dtype), v)  # A v: (B, L, d_v)
        return (out if residual is None else residual + out), weights
    # the pixels over a few keys (projector): weights and output in the residual's layout
    channels_major = is_channels_major(q if residual is None else residual)
    if channels_major:  # k q^T: (B, L, N), contiguous
        logits_t = torch.bmm(k, q.transpose(1, 2))
    else:  # q k^T: (B, N, L), contiguous, seen as its (B, L, N) transpose
        logits_t = torch.bmm(q, k.transpose(1, 2)).transpose(1, 2)
    # The softmax over the few keys runs over the outer axis of (B, L, N), vectorised along
    # the pixels: as the last axis of (B, N, L) it would run one L-long row at a time.
    weights = _softmax(logits_t, scale, 1).transpose(1, 2)  # (B, N, L)
    out = _pixel_product(weights.to(v.dtype), v, channels_major=channels_major,
                         add=residual)  # residual + A v: (B, N, d_v)
    return out, weights


def _softmax_backward(weights: Tensor, grad: Tensor, scale: float) -> Tensor:
    """Gradient of the (scaled) logits from that of the weights, softmax over the last
    dimension."""
    grad = at_least_float32(grad)
    out = weights * (grad - (weights * grad).sum(-1, keepdim=True))
    return out * scale if scale != 1 else out


class _TokenPixelAttention(torch.autograd.Function):
    """:func:`_forward` with its backward written as the few large products it needs."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Optional[Tensor], residual: Optional[Tensor],
                scale: float, v_is_k: bool, residual_is_q: bool) -> Tensor:
        v = k if v_is_k else v
        out, weights = _forward(q, k, v, scale, q if residual_is_q else residual)
        ctx.scale, ctx.v_is_k, ctx.residual_is_q = scale, v_is_k, residual_is_q
        ctx.has_residual = residual is not None
        ctx.save_for_backward(q, k, v, weights)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, weights = ctx.saved_tensors
        # Under autocast the forward's products ran in the output's dtype (bf16/fp16 for
        # float32 inputs); the backward runs outside autocast and does the same.
        q, k, v = (t.to(grad.dtype) for t in (q, k, v))
        need_q, need_k, need_v, need_res = ctx.needs_input_grad[:4]
        if ctx.v_is_k:
            need_k = need_k or need_v
        if q.shape[1] < k.shape[1]:
            grads = _tokens_over_pixels_backward(ctx, grad, q, k, v, weights, need_q, need_k,
                                                 need_v)
        else:
            grads = _pixels_over_tokens_backward(ctx, grad, q, k, v, weights, need_q, need_k,
                                                 need_v)
        dq, dk, dv = grads
        dres = grad if ctx.has_residual and need_res else None
        return dq, dk, (None if ctx.v_is_k else dv), dres, None, None, None


def _tokens_over_pixels_backward(ctx, grad, q, k, v, weights, need_q, need_k, need_v):
    """Tokenizers: ``out = A v``, ``A = softmax_N(q k^T)``; ``grad``: (B, L, d_v)."""
    dtype = v.dtype
    d_weights = _pixels_by_tokens(v, grad).transpose(1, 2)  # grad v^T: (B, L, N)
    d_logits = _softmax_backward(weights, d_weights, ctx.scale).to(dtype)
    dq = None
    if need_q:  # (B, L, N) x (B, N, d), plus the output's gradient when q is the residual
        dq = torch.bmm(d_logits, k) if not ctx.residual_is_q else \
            torch.baddbmm(grad, d_logits, k)
    a = weights.to(dtype)
    dk = dv = None
    if ctx.v_is_k and need_k:  # one pass: dk = dlogits^T q + A^T grad
        dk = _pixel_product(torch.cat([d_logits, a], 1).transpose(1, 2),
                            torch.cat([q, grad], 1),
                            channels_major=is_channels_major(k))
    else:
        if need_k:
            dk = _pixel_product(d_logits.transpose(1, 2), q,
                                channels_major=is_channels_major(k))
        if need_v:
            dv = _pixel_product(a.transpose(1, 2), grad, channels_major=is_channels_major(v))
    return dq, dk, dv


def _pixels_over_tokens_backward(ctx, grad, q, k, v, weights, need_q, need_k, need_v):
    """Projector: ``out = residual + A v``, ``A = softmax_L(q k^T)``; ``grad``: (B, N, d_v)."""
    dtype = v.dtype
    d_weights = _pixels_by_tokens(grad, v)  # grad v^T: (B, N, L)
    d_logits = _softmax_backward(weights, d_weights, ctx.scale).to(dtype)
    dk = torch.bmm(d_logits.transpose(1, 2), q) if need_k else None  # (B, L, d)
    dv = None
    if need_v or (ctx.v_is_k and need_k):
        dv = torch.bmm(weights.to(dtype).transpose(1, 2), grad)  # A^T grad: (B, L, d_v)
    if ctx.v_is_k and need_k:  # the keys are the values too: both parts
        dk, dv = dk + dv, None
    dq = None
    if need_q:
        dq = _pixel_product(d_logits, k, channels_major=is_channels_major(q),
                            add=grad if ctx.residual_is_q else None)
    return dq, dk, dv
