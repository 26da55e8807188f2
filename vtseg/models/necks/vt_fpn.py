"""VT-FPN: a feature pyramid that mixes levels through visual tokens (paper Sec. 5.2).

Shape shorthand: B batch, C_i input channels of level i, C = ``out_channels``,
(H_i, W_i) size of level i, L tokens per level, C_T token channels, S levels.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..layers import FilterTokenizer, Projector, TokenTransformer

__all__ = ['VTFPN']


@MODELS.register_module()
class VTFPN(BaseModule):
    """Visual-token feature pyramid, a drop-in for mmseg's :class:`~mmseg.models.FPN`.

    "From each resolution, we extract 8 visual tokens with 1024 channels each, then relate
    tokens with one transformer before re-projecting back to the feature maps" (paper
    Sec. 5.2). Per level ``i``::

        X_i = lateral_i(C_i)                       1x1 conv, C_i -> C
        T_i, A_i = FilterTokenizer_i(X_i)          L tokens, C -> C_T
        [T_1 .. T_S] = TokenTransformer([T_1 .. T_S])   one transformer, S * L tokens
        P_i = Projector_i(X_i, T_i)                X_i + softmax_L(...) T_i W_V

    The convolutions of FPN's top-down path and its 3x3 output convs are replaced by the
    transformer: levels exchange information only through the tokens. This is the design
    that reproduces the paper's 8.5 G / 2.0 G neck FLOPs (see ``docs`` in the README).

    Args:
        in_channels: channels of each input level, e.g. ``[256, 512, 1024, 2048]``.
        out_channels: C, channels of every output level (FPN's 256).
        num_outs: number of outputs; levels beyond the inputs are max-pooled from the last
            output, like mmseg's FPN with ``add_extra_convs=False``.
        num_tokens: L, tokens extracted per level (paper: 8).
        token_channels: C_T (paper: 1024).
        num_heads: heads of the token transformer; must divide ``token_channels``.
        fast_projector: evaluate the projector's query-key product in token space.
        norm_cfg, act_cfg: for the lateral convs, as in mmseg's FPN.
        init_cfg: as in mmseg's FPN.

    Shape:
        - inputs: S tensors (B, C_i, H_i, W_i)
        - returns ``num_outs`` tensors (B, C, H_i, W_i) (extra levels halve the size)
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 out_channels: int,
                 num_outs: int,
                 *,
                 num_tokens: int = 8,
                 token_channels: int = 1024,
                 num_heads: int = 16,
                 fast_projector: bool = True,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 init_cfg: Optional[dict] = dict(
                     type='Xavier', layer='Conv2d', distribution='uniform')) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, (list, tuple)) or not in_channels \
                or not all(isinstance(c, int) and c > 0 for c in in_channels):
            raise ValueError('VTFPN: in_channels must be a non-empty list of positive '
                             f'integers (one per backbone level), got {in_channels!r}')
        for name, value in [('out_channels', out_channels), ('num_outs', num_outs),
                            ('num_tokens', num_tokens), ('token_channels', token_channels),
                            ('num_heads', num_heads)]:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f'VTFPN: {name} must be a positive integer, got {value!r}')
        if num_outs < len(in_channels):
            raise ValueError(f'VTFPN: num_outs={num_outs} is smaller than the number of input '
                             f'levels ({len(in_channels)}); use num_outs >= '
                             f'{len(in_channels)}')
        if token_channels % num_heads:
            divisors = [d for d in range(1, token_channels + 1) if token_channels % d == 0]
            raise ValueError(f'VTFPN: num_heads={num_heads} must divide token_channels='
                             f'{token_channels}; allowed num_heads: {divisors}')
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.num_tokens = num_tokens

        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False)
            for c in self.in_channels)
        self.tokenizers = nn.ModuleList(
            FilterTokenizer(out_channels, num_tokens, token_channels)
            for _ in self.in_channels)
        self.transformer = TokenTransformer(token_channels, num_heads)
        self.projectors = nn.ModuleList(
            Projector(out_channels, token_channels, fast=fast_projector)
            for _ in self.in_channels)

    def token_groups(self) -> List[Tuple[nn.Module, List[Tuple[str, nn.Module]]]]:
        """Which tokenizers feed which transformer, in the order their tokens are joined.

        Read by :mod:`vtseg.analysis.attention`: the one transformer relates the tokens of
        every level, level ``i`` owning rows ``i*L .. (i+1)*L - 1`` of its attention.
        """
        return [(self.transformer,
                 [(f'level{i}', tokenizer) for i, tokenizer in enumerate(self.tokenizers)])]

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'VTFPN was built for {len(self.in_channels)} input levels '
                             f'(in_channels={self.in_channels}) but got {len(inputs)}; make '
                             'in_channels match the backbone out_indices')
        for i, (c, x) in enumerate(zip(self.in_channels, inputs)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f'VTFPN: input level {i} has shape {tuple(x.shape)} but '
                                 f'in_channels[{i}]={c}; set in_channels to the channels '
                                 'of the backbone outputs, here '
                                 f'{[t.shape[1] if t.dim() > 1 else None for t in inputs]}')
        feats = [lateral(x) for lateral, x in zip(self.lateral_convs, inputs)]  # (B, C, Hi, Wi)
        tokens = [tokenizer(x)[0] for tokenizer, x in zip(self.tokenizers, feats)]  # (B, L, C_T)
        # One transformer relates the tokens of all levels: (B, S * L, C_T).
        mixed = self.transformer(torch.cat(tokens, dim=1))
        mixed = mixed.split(self.num_tokens, dim=1)  # S x (B, L, C_T)
        outs: List[Tensor] = []
        for i, (proj, t) in enumerate(zip(self.projectors, mixed)):
            outs.append(proj(feats[i], t))  # P_i = X_i + softmax_L(...) T_i W_V
            feats[i] = None  # X_i is no longer needed: one level's maps in flight at a time
        # Extra levels, as FPN without extra convs: stride-2 max pooling of the last output.
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
