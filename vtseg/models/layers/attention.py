"""The one attention primitive every VT block is written with.

Paper: Wu et al., "Visual Transformers", https://arxiv.org/abs/2006.03677

Every VT block is dot-product attention ``softmax(q k^T * scale) v``:

* filter tokenizer, Eq. (1): the L learned filters attend over the pixels, scale 1,
  ``T = softmax_HW(W_A^T X^T) X`` (q = W_A^T, k = v = X);
* recurrent and clustering tokenizers, Eq. (2): the same with W_R = T_in W_{T->R} or the
  k-means centroids as queries;
* token transformer, Eq. (3): the tokens attend over themselves;
* projector, Eq. (5): the pixels attend over the tokens, ``softmax_L(X (T W_K W_Q^T)^T)
  T W_V`` (q = X, k = T W_K W_Q^T, v = T W_V).

:func:`attention` evaluates it on one of two paths, equal up to rounding:

* **fused**: :func:`torch.nn.functional.scaled_dot_product_attention`, which never
  materialises the (N_q, N_k) weights (flash/memory-efficient kernels on CPU and GPU);
* **explicit**: ``matmul``, ``softmax``, ``matmul`` with the paper's letters; the softmax
  runs in at least float32 through a named ``nn.Softmax`` module (``attn_softmax`` of each
  block) so forward hooks can observe the weights.

One switch chooses, in the style of timm's ``use_fused_attn``: each block reads the
process default (:func:`use_fused_attn`, environment variable ``VTSEG_FUSED_ATTN=0`` to
turn it off) into its ``fused_attn`` attribute when built; :func:`set_fused_attn` changes
the default, :func:`explicit_attention` switches one model's blocks to the explicit path
for a ``with`` block (the attention recorder uses it) and restores them after.

Shape shorthand: B batch dims (any number), N_q queries, N_k keys, d query/key width,
d_v value width.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import at_least_float32, is_channels_major

__all__ = ['attention', 'use_fused_attn', 'set_fused_attn', 'explicit_attention']

_FUSED_ATTN = os.environ.get('VTSEG_FUSED_ATTN', '1').strip().lower() not in ('0', 'false',
                                                                               'no', 'off')


def use_fused_attn() -> bool:
    """The process-wide default of the blocks' ``fused_attn`` (read when a block is built)."""
    return _FUSED_ATTN


def set_fused_attn(enable: bool = True) -> None:
    """Set the default path of blocks built from now on (existing blocks keep theirs)."""
    global _FUSED_ATTN
    _FUSED_ATTN = bool(enable)


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Run every attention block of ``model`` on the explicit path inside the block.

    Each module with a ``fused_attn`` attribute is switched off and restored on exit (also
    when the block raises), so an observer (hooks on ``attn_softmax``) sees the weights of
    the computation that runs, and the model is left as it was.
    """
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, 'fused_attn')]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield model
    finally:
        for m, fused in saved:
            m.fused_attn = fused


#: Attention with at most this many queries or keys relates tokens to pixels (a few tokens
#: against a whole map); its weights are no larger than a few feature-map channels.
FEW_TOKENS = 32


def attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float, fused: bool,
              softmax: Optional[nn.Module] = None,
              residual: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
    """``residual + softmax(q k^T * scale) v`` on the fused or the explicit path.

    Args:
        q: queries.
        k: keys.
        v: values.
        scale: logit scale (1 for the tokenizers, ``d ** -0.5`` elsewhere).
        fused: use the fused path (see below).
        softmax: the block's ``attn_softmax`` module (softmax over the last dimension);
            the explicit path runs the weights through it so hooks can read them.
        residual: added to the output (the projector's ``X_in``), or ``None``.

    The fused path runs :func:`~torch.nn.functional.scaled_dot_product_attention` for
    attention among tokens. Attention between a few tokens and a whole feature map (at
    most :data:`FEW_TOKENS` queries over more keys, or keys for more queries: the
    tokenizers and the projector) it runs as two GEMMs over the long pixel axis, which is
    what their shapes need on CPU and GPU alike: SDPA's kernels split the work over blocks
    of queries, so a tokenizer's L queries would run as one block on one core, and the
    (N, L) weights of a projector are no larger than L channels of the map, while the
    second GEMM can add the residual as it writes its output (one pass over the map
    instead of two). Both GEMMs read the map in the order it is stored, one pixel per row
    (channels_last) or one channel per row (NCHW, see
    :func:`~vtseg.models.layers._utils.flatten_pixels`), and the output keeps that layout,
    so neither memory format costs a copy.

    Returns:
        ``(out, weights)``: ``weights`` are the (..., N_q, N_k) attention weights on the
        explicit path (each row sums to one) and ``None`` on the fused path.

    Shape:
        - q: (B..., N_q, d), k: (B..., N_k, d), v: (B..., N_k, d_v)
        - residual: shaped like out, (B..., N_q, d_v)
    """
    n_q, n_k = q.shape[-2], k.shape[-2]
    few_queries = n_q <= FEW_TOKENS < n_k
    few_keys = n_k <= FEW_TOKENS < n_q
    if fused and not (few_queries or few_keys):
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return (out if residual is None else residual + out), None
    if fused and few_keys and is_channels_major(q if residual is None else residual):
        return _pixels_over_tokens_channels_major(q, k, v, scale, residual), None
    if fused and few_queries and not is_channels_major(k):
        # (N_k, N_q) logits: the long key axis, one pixel per row, is the GEMM's rows
        logits = torch.matmul(k, q.transpose(-2, -1)).transpose(-2, -1)  # (B..., N_q, N_k)
    else:
        logits = torch.matmul(q, k.transpose(-2, -1))  # q k^T: (B..., N_q, N_k)
    if scale != 1:
        logits = logits * scale
    # Low-precision logits are normalised in float32: over tens of thousands of pixels fp16
    # and bf16 would overflow or round the small weights to zero.
    logits = at_least_float32(logits)
    if fused or softmax is None:
        weights = logits.softmax(-1).to(v.dtype)
    else:
        weights = softmax(logits).to(v.dtype)
    if residual is None:
        out = torch.matmul(weights, v)  # A v
    elif fused:  # residual + A v as one GEMM writing its output once
        out = _baddbmm(residual, weights, v)
    else:
        out = residual + torch.matmul(weights, v)  # residual + A v
    return out, (None if fused else weights)


def _baddbmm(residual: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``residual + a b`` over any batch dims, as one batched GEMM (``b`` may broadcast)."""
    batch = a.shape[:-2]
    out = torch.baddbmm(residual.reshape(-1, *residual.shape[-2:]),
                        a.reshape(-1, *a.shape[-2:]),
                        b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:]))
    return out.view(*batch, *out.shape[-2:])


def _pixels_over_tokens_channels_major(q: Tensor, k: Tensor, v: Tensor, scale: float,
                                       residual: Optional[Tensor]) -> Tensor:
    """The fused path of pixels attending over a few tokens, for pixels stored channel by
    channel (an NCHW map): the same products transposed, so that every (d, N) operand is
    read, and the output written, in that order (``out^T = res^T + v^T softmax(k q^T)``).
    """
    logits_t = torch.matmul(k, q.transpose(-2, -1))  # k q^T: (B..., N_k, N_q)
    if scale != 1:
        logits_t = logits_t * scale
    weights_t = at_least_float32(logits_t).softmax(-2).to(v.dtype)  # over the keys
    v_t = v.transpose(-2, -1)  # (B..., d_v, N_k)
    if residual is None:
        out_t = torch.matmul(v_t, weights_t)
    else:
        out_t = _baddbmm(residual.transpose(-2, -1), v_t, weights_t)  # (B..., d_v, N_q)
    return out_t.transpose(-2, -1)  # (B..., N_q, d_v), stored channel by channel
