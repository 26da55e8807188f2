"""Tokenizers: turn a feature map into a few visual tokens (paper Sec. 3.1 and Table 3).

Paper: Wu et al., "Visual Transformers: Token-based Image Representation and Processing for
Computer Vision", https://arxiv.org/abs/2006.03677

Shape shorthand used throughout:
    B: batch, C: feature channels, H, W: feature map size, N = H * W pixels,
    L: number of tokens, C_T: token channels.

Every tokenizer maps a feature map ``x: (B, C, H, W)`` to

* ``tokens: (B, L, C_T)`` and
* ``attn: (B, L, H, W)``, the spatial attention of each token: ``attn[b, l]`` sums to one
  over the ``H x W`` pixels, and ``tokens[b, l] = sum_p attn[b, l, p] * x[b, :, p]`` (before
  the optional ``C -> C_T`` projection).

The learned tokenizers are cross-attention of L queries over the pixels with scale 1,
evaluated by :func:`~vtseg.models.layers.attention.attention`: on its fused path ``attn``
is not materialised and is returned as ``None``; on the explicit path (``fused_attn =
False``, or inside :func:`~vtseg.models.layers.attention.explicit_attention`) it is
returned and passes through the submodule ``attn_softmax``, so tools can capture it with
forward hooks (:mod:`vtseg.analysis.attention`).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import check_positive_int, flatten_pixels
from .attention import attention, use_fused_attn

__all__ = ['FilterTokenizer', 'RecurrentTokenizer', 'PoolingTokenizer', 'ClusteringTokenizer']


def token_grid(num_tokens: int) -> Tuple[int, int]:
    """The most square ``(h, w)`` grid with ``h * w == num_tokens`` (16 -> 4x4, 8 -> 2x4)."""
    check_positive_int('token_grid', num_tokens=num_tokens)
    h = int(math.isqrt(num_tokens))
    while num_tokens % h:
        h -= 1
    return h, num_tokens // h


class _SpatialTokenizer(nn.Module):
    """Shared tail of all tokenizers: softmax over pixels, weighted pooling, projection.

    Args:
        in_channels: C, channels of the feature map.
        num_tokens: L.
        token_channels: C_T; when it differs from C a linear layer maps tokens C -> C_T.
    """

    def __init__(self, in_channels: int, num_tokens: int,
                 token_channels: Optional[int] = None) -> None:
        super().__init__()
        token_channels = in_channels if token_channels is None else token_channels
        check_positive_int(type(self).__name__, in_channels=in_channels,
                           num_tokens=num_tokens, token_channels=token_channels)
        self.in_channels = in_channels
        self.num_tokens = num_tokens
        self.token_channels = token_channels
        self.fused_attn = use_fused_attn()
        # softmax_HW: each token's weights over the N pixels sum to one.
        self.attn_softmax = nn.Softmax(dim=-1)
        self.token_proj = (nn.Linear(in_channels, token_channels)
                           if token_channels != in_channels else nn.Identity())

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{type(self).__name__} expects a (B, {self.in_channels}, H, W) '
                             f'feature map, got shape {tuple(x.shape)}')

    def _attend(self, x: Tensor, queries: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """``A = softmax_HW(Q X^T)``, ``T = A X``: the L queries attend over the pixels.

        Args:
            x: (B, C, H, W) feature map, keys and values at once.
            queries: (B, L, C), one filter per token (``W_A^T``, ``W_R`` or centroids).

        Returns:
            tokens (B, L, C_T) and attn (B, L, H, W), or ``None`` on the fused path.
        """
        b, _, h, w = x.shape
        pixels = flatten_pixels(x)[:, None]  # (B, 1, N, C): one head
        # T = softmax_HW(Q X^T) X                (B, 1, L, C) x (B, 1, N, C) -> (B, 1, L, C)
        tokens, attn = attention(queries[:, None], pixels, pixels, scale=1.0,
                                 fused=self.fused_attn, softmax=self.attn_softmax)
        tokens = self.token_proj(tokens.squeeze(1))  # (B, L, C) -> (B, L, C_T)
        if attn is not None:
            attn = attn.reshape(b, self.num_tokens, h, w)  # (B, 1, L, N) -> (B, L, H, W)
        return tokens, attn


class FilterTokenizer(_SpatialTokenizer):
    """Filter-based tokenizer, paper Eq. (1): ``T = softmax_HW(X W_A)^T X``.

    ``W_A: C -> L`` is a learned set of L spatial filters; each token is the average of the
    pixels, weighted by how strongly its filter responds. Used by the first VT module.

    Shape:
        - x: (B, C, H, W)
        - returns tokens (B, L, C_T) and attn (B, L, H, W) (``None`` on the fused path)
    """

    def __init__(self, in_channels: int, num_tokens: int,
                 token_channels: Optional[int] = None) -> None:
        super().__init__(in_channels, num_tokens, token_channels)
        self.token_filters = nn.Parameter(torch.empty(num_tokens, in_channels))  # W_A^T
        nn.init.kaiming_uniform_(self.token_filters, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        self._check_input(x)
        # Queries W_A^T, the same for every image: (L, C) -> (B, L, C) view. (Expanded
        # rather than broadcast: mmengine's FlopAnalyzer counts a 2-D x 3-D product as if
        # the batch were 1.)
        filters = self.token_filters.expand(x.shape[0], -1, -1)
        return self._attend(x, filters)  # Eq. (1)


class RecurrentTokenizer(_SpatialTokenizer):
    """Recurrent tokenizer, paper Eq. (2): ``W_R = T_in W_{T->R}``,
    ``T = softmax_HW(X W_R^T)^T X``.

    The previous module's tokens become L dynamic filters, so this layer's tokens depend on
    what the previous layer found. Used from the second VT module on.

    Args:
        in_channels: C.
        num_tokens: L (must equal the number of incoming tokens).
        token_channels: C_T, width of incoming and outgoing tokens (default C).

    Shape:
        - x: (B, C, H, W), tokens_in: (B, L, C_T)
        - returns tokens (B, L, C_T) and attn (B, L, H, W) (``None`` on the fused path)
    """

    def __init__(self, in_channels: int, num_tokens: int,
                 token_channels: Optional[int] = None) -> None:
        super().__init__(in_channels, num_tokens, token_channels)
        # W_{T->R}: token space (C_T) -> filter space (C).
        self.token_to_filter = nn.Linear(self.token_channels, in_channels, bias=False)

    def forward(self, x: Tensor, tokens_in: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        self._check_input(x)
        expected = (x.shape[0], self.num_tokens, self.token_channels)
        if tuple(tokens_in.shape) != expected:
            raise ValueError(f'RecurrentTokenizer expects incoming tokens of shape {expected}, '
                             f'got {tuple(tokens_in.shape)}')
        filters = self.token_to_filter(tokens_in)  # W_R = T_in W_{T->R}: (B, L, C)
        return self._attend(x, filters)  # Eq. (2)


def _bilinear_weights(in_size: int, out_size: int, x: Tensor) -> Tensor:
    """The (out_size, in_size) matrix that bilinear resizing applies along one axis."""
    eye = torch.eye(in_size, device=x.device, dtype=x.dtype)[None, None]  # (1, 1, in, in)
    return F.interpolate(eye, size=(out_size, in_size), mode='bilinear',
                         align_corners=False)[0, 0]


class PoolingTokenizer(_SpatialTokenizer):
    """Pooling-based tokenizer of the ablation (Table 3): bilinear downsampling to L pixels.

    Token ``l = (i, j)`` of an ``h x w`` grid is the bilinearly resized map at ``(i, j)``;
    its attention is the interpolation weights, so ``attn`` has the same meaning as for the
    learned tokenizers and sums to one over pixels. No parameters besides the optional
    ``C -> C_T`` projection.

    Shape:
        - x: (B, C, H, W)
        - returns tokens (B, L, C_T) and attn (B, L, H, W)
    """

    def __init__(self, in_channels: int, num_tokens: int,
                 token_channels: Optional[int] = None) -> None:
        super().__init__(in_channels, num_tokens, token_channels)
        self.grid = token_grid(num_tokens)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        self._check_input(x)
        b, _, h, w = x.shape
        gh, gw = self.grid
        wy = _bilinear_weights(h, gh, x)  # (gh, H)
        wx = _bilinear_weights(w, gw, x)  # (gw, W)
        attn = torch.einsum('ih,jw->ijhw', wy, wx).reshape(1, self.num_tokens, h * w)
        # T = A^T X                                      (1, L, N) x (B, C, N) -> (B, L, C)
        tokens = torch.einsum('oln,bcn->blc', attn, x.flatten(2))
        attn = attn.expand(b, -1, -1).reshape(b, self.num_tokens, h, w)
        return self.token_proj(tokens), attn


class ClusteringTokenizer(_SpatialTokenizer):
    """Clustering-based tokenizer of the ablation (Table 3): k-means centroids as ``W_A``.

    Per image, spherical k-means runs over the L2-normalised pixels (centroids initialised
    by bilinear downsampling of the normalised map to L points, then ``num_iters`` Lloyd
    steps, no gradient through the centroids). The centroids then replace the learned
    filters of :class:`FilterTokenizer`: ``T = softmax_HW(X K^T)^T X`` with ``K`` the
    (L, C) centroids; gradients flow through ``X``.

    Shape:
        - x: (B, C, H, W)
        - returns tokens (B, L, C_T) and attn (B, L, H, W) (``None`` on the fused path)
    """

    def __init__(self, in_channels: int, num_tokens: int,
                 token_channels: Optional[int] = None, *, num_iters: int = 3) -> None:
        super().__init__(in_channels, num_tokens, token_channels)
        check_positive_int(type(self).__name__, num_iters=num_iters)
        self.grid = token_grid(num_tokens)
        self.num_iters = num_iters

    @torch.no_grad()
    def centroids(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, L, C) unit-norm k-means centroids of the pixels."""
        x = F.normalize(x.detach().float(), dim=1)
        pixels = x.flatten(2).transpose(1, 2)  # (B, N, C)
        init = F.interpolate(x, size=self.grid, mode='bilinear', align_corners=False)
        centroids = F.normalize(init.flatten(2).transpose(1, 2), dim=-1)  # (B, L, C)
        for _ in range(self.num_iters):
            assign = torch.einsum('bnc,blc->bnl', pixels, centroids).argmax(-1)  # (B, N)
            onehot = F.one_hot(assign, self.num_tokens).to(pixels.dtype)  # (B, N, L)
            sums = torch.einsum('bnl,bnc->blc', onehot, pixels)
            counts = onehot.sum(1).unsqueeze(-1)  # (B, L, 1)
            # An empty cluster keeps its previous centroid.
            centroids = torch.where(counts > 0, F.normalize(sums, dim=-1), centroids)
        return centroids

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        self._check_input(x)
        centroids = self.centroids(x).to(x.dtype)  # K: (B, L, C), in place of W_A^T
        return self._attend(x, centroids)  # T = softmax_HW(K X^T) X
