"""Projector: tokens back to pixels (paper Sec. 3.3, Eq. (5)).

Shape shorthand: B batch, C pixel channels, H, W map size, N = H * W, L tokens,
C_T token channels, d query/key width.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._utils import at_least_float32, check_positive_int, rows_times_pixels

__all__ = ['Projector']


class Projector(nn.Module):
    """Pixels read the tokens back, with a residual, paper Eq. (5)::

        X_out = X_in + softmax_L((X_in W_Q)(T W_K)^T) T W_V

    ``W_V: C_T -> C`` is the value projection of the paper's v1 appendix, needed whenever
    the token width differs from the feature width (identity otherwise).

    Two ways to evaluate the query-key product, equal up to rounding:

    * ``fast=True`` (default) uses associativity, ``(X W_Q)(T W_K)^T = X (T W_K W_Q^T)^T``:
      the (L, C) matrix ``T W_K W_Q^T`` is built in token space and each pixel pays
      ``C x L`` multiply-accumulates instead of ``C x d`` for ``X W_Q``.
    * ``fast=False`` follows the equation literally (per-pixel ``X W_Q``).

    Args:
        in_channels: C.
        token_channels: C_T.
        qk_channels: d (default C).
        fast: evaluate the query-key product in token space.

    ``forward(x, tokens, inplace=True)`` accumulates the read-out into ``x``'s memory and
    returns it (``x`` is overwritten) when autograd is not recording: inference then
    allocates no (B, C, H, W) temporary. It is ignored while autograd records and while
    tracing (FLOP counting sees the out-of-place product).

    Shape:
        - x: (B, C, H, W), tokens: (B, L, C_T)
        - returns (B, C, H, W)
    """

    def __init__(self, in_channels: int, token_channels: int, *,
                 qk_channels: Optional[int] = None, fast: bool = True) -> None:
        super().__init__()
        qk_channels = in_channels if qk_channels is None else qk_channels
        check_positive_int('Projector', in_channels=in_channels,
                           token_channels=token_channels, qk_channels=qk_channels)
        self.in_channels = in_channels
        self.token_channels = token_channels
        self.fast = fast
        self.scale = qk_channels ** -0.5
        self.query = nn.Linear(in_channels, qk_channels, bias=False)   # W_Q (pixels)
        self.key = nn.Linear(token_channels, qk_channels, bias=False)  # W_K (tokens)
        self.value = (nn.Linear(token_channels, in_channels)           # W_V [v1]
                      if token_channels != in_channels else nn.Identity())
        self.attn_softmax = nn.Softmax(dim=-1)  # softmax_L: each pixel over the tokens

    def forward(self, x: Tensor, tokens: Tensor, *, inplace: bool = False) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'Projector expects a (B, {self.in_channels}, H, W) feature map, '
                             f'got {tuple(x.shape)}')
        if tokens.dim() != 3 or tokens.shape[0] != x.shape[0] \
                or tokens.shape[-1] != self.token_channels:
            raise ValueError(f'Projector expects tokens of shape (B={x.shape[0]}, L, '
                             f'{self.token_channels}), got {tuple(tokens.shape)}')
        pixels = x.flatten(2)  # (B, C, N)
        tk = self.key(tokens)  # T W_K: (B, L, d)
        if self.fast:
            # T W_K W_Q^T, token space: (B, L, d) x (d, C) -> (B, L, C)
            # (nn.Linear stores W_Q^T, so self.query.weight is (d, C).)
            # The 1/sqrt(d) logit scale is applied here, to L x C numbers instead of N x L.
            tkq = torch.matmul(tk, self.query.weight) * self.scale
            # X (T W_K W_Q^T)^T, computed transposed so that the long pixel axis is the GEMM's
            # contiguous output axis:     (B, L, C) x (B, C, N) -> (B, L, N) -> (B, N, L) view
            logits = at_least_float32(rows_times_pixels(tkq, pixels).transpose(1, 2))
        else:
            xq = self.query(pixels.transpose(1, 2))  # X W_Q: (B, N, d)
            logits = torch.einsum('bnd,bld->bnl', xq, tk)  # (X W_Q)(T W_K)^T
            logits = at_least_float32(logits) * self.scale
        attn = self.attn_softmax(logits).to(x.dtype)  # (B, N, L)
        values = self.value(tokens)  # T W_V: (B, L, C)
        # (A T W_V)^T, pixels last:         (B, C, L) x (B, L, N) -> (B, C, N)
        values_t, attn_t = values.transpose(1, 2), attn.transpose(1, 2)
        if inplace and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            # X_in += ..., one pass over the map and no (B, C, N) temporaries.
            return pixels.baddbmm_(values_t.to(x.dtype), attn_t).reshape(x.shape)
        return x + torch.matmul(values_t, attn_t).reshape(x.shape)
