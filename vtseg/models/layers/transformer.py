"""Transformer in token space (paper Sec. 3.2, Eqs. (3)-(4)).

Shape shorthand: B batch, L tokens, C_T token channels, h heads, d = qk_channels / h.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ._utils import check_positive_int
from .attention import attention, use_fused_attn

__all__ = ['TokenTransformer']


class TokenTransformer(nn.Module):
    """Self-attention over visual tokens followed by a two-layer feed-forward network.

    Paper Eqs. (3) and (4)::

        T'_out = T_in + softmax_L((T_in K)(T_in Q)^T) T_in
        T_out  = T'_out + relu(T'_out F1) F2

    Differences from the printed equations, all optional:

    * ``num_heads``: multi-head attention as in the paper's v1 appendix (16 heads there);
      each head attends with its slice of K and Q and mixes its slice of the channels.
    * ``value_proj``: a learned value projection (v1 appendix) instead of ``T_in`` itself.
    * ``norm``: pre-norm LayerNorm before the attention and the feed-forward network. The
      printed equations have none; the paper trains with (Sync)BN in practice, and without
      a norm the token magnitudes drift in fp16/bf16. It adds no multiply-accumulates worth
      counting.
    * the logits are scaled by ``d ** -0.5`` (standard dot-product attention scaling).

    The attention is self-attention of the tokens (queries ``T_in K``, keys ``T_in Q``, in
    the paper's order), evaluated by :func:`~vtseg.models.layers.attention.attention`;
    on its explicit path the weights pass through the submodule ``attn_softmax``.

    Args:
        channels: C_T, token width.
        num_heads: h, must divide ``qk_channels`` and ``channels``.
        qk_channels: width of K and Q (default C_T; v1 uses C_T / 2).
        ffn_channels: hidden width of F1 (default C_T).
        norm: use pre-norm LayerNorm.
        value_proj: use a learned value projection.

    Shape:
        - tokens: (B, L, C_T) -> (B, L, C_T)
    """

    def __init__(self, channels: int, num_heads: int = 1, *,
                 qk_channels: Optional[int] = None, ffn_channels: Optional[int] = None,
                 norm: bool = True, value_proj: bool = False) -> None:
        super().__init__()
        qk_channels = channels if qk_channels is None else qk_channels
        ffn_channels = channels if ffn_channels is None else ffn_channels
        check_positive_int('TokenTransformer', channels=channels, num_heads=num_heads,
                           qk_channels=qk_channels, ffn_channels=ffn_channels)
        for name, value in [('channels', channels), ('qk_channels', qk_channels)]:
            if value % num_heads:
                raise ValueError(f'TokenTransformer: num_heads={num_heads} must divide '
                                 f'{name}={value}; allowed num_heads: '
                                 f'{[d for d in range(1, value + 1) if value % d == 0]}')
        self.channels = channels
        self.num_heads = num_heads
        self.scale = (qk_channels // num_heads) ** -0.5
        self.fused_attn = use_fused_attn()

        self.norm1 = nn.LayerNorm(channels) if norm else nn.Identity()
        self.key = nn.Linear(channels, qk_channels, bias=False)    # K in Eq. (3)
        self.query = nn.Linear(channels, qk_channels, bias=False)  # Q in Eq. (3)
        self.value = nn.Linear(channels, channels) if value_proj else nn.Identity()
        self.attn_softmax = nn.Softmax(dim=-1)  # softmax_L over the attended tokens
        self.norm2 = nn.LayerNorm(channels) if norm else nn.Identity()
        self.ffn = nn.Sequential(
            nn.Linear(channels, ffn_channels),  # F1
            nn.ReLU(inplace=True),
            nn.Linear(ffn_channels, channels),  # F2
        )

    def _heads(self, t: Tensor) -> Tensor:
        b, n, c = t.shape  # (B, L, c) -> (B, h, L, c / h)
        return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3 or tokens.shape[-1] != self.channels:
            raise ValueError(f'TokenTransformer expects tokens of shape (B, L, {self.channels}),'
                             f' got {tuple(tokens.shape)}')
        b, n, c = tokens.shape
        t = self.norm1(tokens)
        tk = self._heads(self.key(t))    # T_in K: (B, h, L, d)
        tq = self._heads(self.query(t))  # T_in Q: (B, h, L, d)
        v = self._heads(self.value(t))   # T_in:   (B, h, L, C_T / h)
        # softmax_L((T_in K)(T_in Q)^T) T_in                  -> (B, h, L, C_T / h), Eq. (3)
        mixed, _ = attention(tk, tq, v, scale=self.scale, fused=self.fused_attn,
                             softmax=self.attn_softmax)
        tokens = tokens + mixed.transpose(1, 2).reshape(b, n, c)  # T'_out
        return tokens + self.ffn(self.norm2(tokens))  # T_out, Eq. (4)
