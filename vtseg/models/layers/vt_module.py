"""One Visual Transformer module: tokenizer -> transformer -> projector (paper Sec. 3, Fig. 1).

Paper: Wu et al., "Visual Transformers: Token-based Image Representation and Processing for
Computer Vision", https://arxiv.org/abs/2006.03677

Shape shorthand: B batch, C feature channels, H, W map size, L tokens, C_T token channels.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import Tensor, nn

from ._utils import check_positive_int
from .projector import Projector
from .tokenizers import FilterTokenizer, RecurrentTokenizer
from .transformer import TokenTransformer

__all__ = ['VTModule']


class VTModule(nn.Module):
    """A VT module as stacked in VT-ResNet's last stage::

        T_in'    = tokenizer(X_in[, T_prev])    filter-based (Eq. 1) or recurrent (Eq. 2)
        T_out    = transformer(T_in')           Eqs. (3)-(4), in token space
        X_out    = projector(X_in, T_out)       Eq. (5), X_in + softmax_L(...) T_out W_V

    The first module of a stack uses a :class:`FilterTokenizer` (no previous tokens exist),
    later ones a :class:`RecurrentTokenizer` that turns the previous module's tokens into
    this module's filters. The submodules are named ``tokenizer``, ``transformer`` and
    ``projector``; each holds its attention softmax as ``attn_softmax`` for forward hooks.

    Args:
        in_channels: C, channels of the feature map (kept by the module).
        num_tokens: L.
        token_channels: C_T.
        recurrent: use a recurrent tokenizer; ``forward`` then needs ``tokens_in``.
        num_heads: heads of the token transformer.
        qk_channels: width of the transformer's K and Q (default ``C_T``).
        ffn_channels: hidden width of the transformer's feed-forward network (default C_T).
        value_proj: learned value projection in the transformer.
        norm: pre-norm LayerNorm in the transformer.
        projector_qk_channels: query/key width of the projector (default C).
        fast_projector: evaluate the projector's query-key product in token space.

    Shape:
        - x: (B, C, H, W); tokens_in: (B, L, C_T) for a recurrent module, else ``None``
        - returns x_out (B, C, H, W) and tokens_out (B, L, C_T)
    """

    def __init__(self, in_channels: int, num_tokens: int = 16, token_channels: int = 1024, *,
                 recurrent: bool = False, num_heads: int = 16,
                 qk_channels: Optional[int] = None, ffn_channels: Optional[int] = None,
                 value_proj: bool = False, norm: bool = True,
                 projector_qk_channels: Optional[int] = None,
                 fast_projector: bool = True) -> None:
        super().__init__()
        check_positive_int('VTModule', in_channels=in_channels, num_tokens=num_tokens,
                           token_channels=token_channels)
        self.in_channels = in_channels
        self.num_tokens = num_tokens
        self.token_channels = token_channels
        self.recurrent = recurrent
        tokenizer_type = RecurrentTokenizer if recurrent else FilterTokenizer
        self.tokenizer = tokenizer_type(in_channels, num_tokens, token_channels)
        self.transformer = TokenTransformer(
            token_channels, num_heads, qk_channels=qk_channels, ffn_channels=ffn_channels,
            norm=norm, value_proj=value_proj)
        self.projector = Projector(in_channels, token_channels,
                                   qk_channels=projector_qk_channels, fast=fast_projector)

    def token_groups(self) -> List[Tuple[nn.Module, List[Tuple[str, nn.Module]]]]:
        """The tokenizer whose tokens the transformer relates (see :mod:`vtseg.analysis`)."""
        return [(self.transformer, [('tokenizer', self.tokenizer)])]

    def forward(self, x: Tensor, tokens_in: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        if self.recurrent:
            if tokens_in is None:
                raise ValueError('VTModule(recurrent=True) needs the previous module\'s tokens: '
                                 'call it as module(x, tokens_in)')
            tokens, _ = self.tokenizer(x, tokens_in)  # (B, L, C_T), Eq. (2)
        else:
            if tokens_in is not None:
                raise ValueError('VTModule(recurrent=False) extracts tokens with learned '
                                 'filters and takes no tokens_in; build it with '
                                 'recurrent=True to condition on previous tokens')
            tokens, _ = self.tokenizer(x)  # (B, L, C_T), Eq. (1)
        tokens = self.transformer(tokens)  # (B, L, C_T), Eqs. (3)-(4)
        x = self.projector(x, tokens)      # (B, C, H, W), Eq. (5)
        return x, tokens

    def extra_repr(self) -> str:
        kind = 'recurrent' if self.recurrent else 'filter'
        return (f'in_channels={self.in_channels}, num_tokens={self.num_tokens}, '
                f'token_channels={self.token_channels}, tokenizer={kind}')
