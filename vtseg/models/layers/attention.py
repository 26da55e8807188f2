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

* **fused**: :func:`torch.nn.functional.scaled_dot_product_attention` among tokens, which
  never materialises the (N_q, N_k) weights (flash/memory-efficient kernels on CPU and
  GPU), and :mod:`~vtseg.models.layers.token_pixel_attention` between a few tokens and a
  map's pixels (GEMMs over the pixel axis, with a backward of its own; at inference on a
  CPU, vtseg's kernels that do each block's products in one pass over the map, see
  :mod:`~vtseg.models.layers.token_pixel_kernels`);
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

from ._utils import at_least_float32
from .token_pixel_attention import token_pixel_attention

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
    tokenizers and the projector) it runs as
    :func:`~vtseg.models.layers.token_pixel_attention.token_pixel_attention`: two GEMMs
    over the long pixel axis, which is what their shapes need on CPU and GPU alike (SDPA's
    kernels split the work over blocks of queries, so a tokenizer's L queries would run as
    one block on one core, and the (N, L) weights of a projector are no larger than L
    channels of the map), reading and writing a map in the memory format it is stored in,
    with a backward that does the same.

    Returns:
        ``(out, weights)``: ``weights`` are the (..., N_q, N_k) attention weights on the
        explicit path (each row sums to one) and ``None`` on the fused path.

    Shape:
        - q: (B..., N_q, d), k: (B..., N_k, d), v: (B..., N_k, d_v)
        - residual: shaped like out, (B..., N_q, d_v)
    """
    n_q, n_k = q.shape[-2], k.shape[-2]
    if fused:
        if n_q <= FEW_TOKENS < n_k or n_k <= FEW_TOKENS < n_q:
            return token_pixel_attention(q, k, v, scale=scale, residual=residual), None
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return (out if residual is None else residual + out), None
    logits = torch.matmul(q, k.transpose(-2, -1))  # q k^T: (B..., N_q, N_k)
    if scale != 1:
        logits = logits * scale
    # Low-precision logits are normalised in float32: over tens of thousands of pixels fp16
    # and bf16 would overflow or round the small weights to zero.
    logits = at_least_float32(logits)
    weights = (logits.softmax(-1) if softmax is None else softmax(logits)).to(v.dtype)
    out = torch.matmul(weights, v)  # A v
    return (out if residual is None else residual + out), weights
