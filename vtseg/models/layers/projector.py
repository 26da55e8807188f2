"""Projector: tokens back to pixels (paper Sec. 3.3, Eq. (5)).

Shape shorthand: B batch, C pixel channels, H, W map size, N = H * W, L tokens,
C_T token channels, d query/key width.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ._utils import check_positive_int, flatten_pixels, unflatten_pixels
from .attention import attention, use_fused_attn

__all__ = ['Projector']


class Projector(nn.Module):
    """Pixels read the tokens back, with a residual, paper Eq. (5)::

        X_out = X_in + softmax_L((X_in W_Q)(T W_K)^T) T W_V

    Cross-attention of the N pixels over the L tokens, evaluated by
    :func:`~vtseg.models.layers.attention.attention`. ``W_V: C_T -> C`` is the value
    projection of the paper's v1 appendix, needed whenever the token width differs from the
    feature width (identity otherwise).

    Two ways to form the query-key product, equal up to rounding:

    * ``fast=True`` (default) uses associativity, ``(X W_Q)(T W_K)^T = X (T W_K W_Q^T)^T``:
      the keys ``T W_K W_Q^T`` (L, C) are built in token space and the pixels are the
      queries as they are, so each pixel pays ``C x L`` multiply-accumulates instead of
      ``C x d`` for ``X W_Q``;
    * ``fast=False`` follows the equation literally (per-pixel ``X W_Q``).

    Args:
        in_channels: C.
        token_channels: C_T.
        qk_channels: d (default C).
        fast: evaluate the query-key product in token space.

    Shape:
        - x: (B, C, H, W), tokens: (B, L, C_T)
        - returns (B, C, H, W) in the memory format of ``x`` (NCHW or channels_last)
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
        self.fused_attn = use_fused_attn()
        self.scale = qk_channels ** -0.5
        self.query = nn.Linear(in_channels, qk_channels, bias=False)   # W_Q (pixels)
        self.key = nn.Linear(token_channels, qk_channels, bias=False)  # W_K (tokens)
        self.value = (nn.Linear(token_channels, in_channels)           # W_V [v1]
                      if token_channels != in_channels else nn.Identity())
        self.attn_softmax = nn.Softmax(dim=-1)  # softmax_L: each pixel over the tokens

    def forward(self, x: Tensor, tokens: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'Projector expects a (B, {self.in_channels}, H, W) feature map, '
                             f'got {tuple(x.shape)}')
        if tokens.dim() != 3 or tokens.shape[0] != x.shape[0] \
                or tokens.shape[-1] != self.token_channels:
            raise ValueError(f'Projector expects tokens of shape (B={x.shape[0]}, L, '
                             f'{self.token_channels}), got {tuple(tokens.shape)}')
        _, _, h, w = x.shape
        pixels = flatten_pixels(x)[:, None]  # X: (B, 1, N, C), one head
        keys = self.key(tokens)[:, None]  # T W_K: (B, 1, L, d)
        if self.fast:
            # Token space: T W_K W_Q^T / sqrt(d), (B, 1, L, d) x (d, C) -> (B, 1, L, C);
            # the 1/sqrt(d) is applied to these L x C numbers rather than to N x L logits.
            # (nn.Linear stores W_Q^T, so self.query.weight is (d, C).)
            queries, keys = pixels, torch.matmul(keys, self.query.weight) * self.scale
            scale = 1.0
        else:
            queries, scale = self.query(pixels), self.scale  # X W_Q: (B, 1, N, d)
        values = self.value(tokens)[:, None]  # T W_V: (B, 1, L, C)
        # X_in + softmax_L(queries keys^T) T W_V                               (B, 1, N, C)
        out, _ = attention(queries, keys, values, scale=scale, fused=self.fused_attn,
                           softmax=self.attn_softmax, residual=pixels)
        # squeeze, not [:, 0]: its gradient is a view of the incoming one, in its layout
        return unflatten_pixels(out.squeeze(1), h, w)  # Eq. (5)
