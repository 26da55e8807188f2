"""Visual Transformer building blocks as plain PyTorch modules."""
from .attention import attention, explicit_attention, set_fused_attn, use_fused_attn
from .projector import Projector
from .tokenizers import (
                         ClusteringTokenizer,
                         FilterTokenizer,
                         PoolingTokenizer,
                         RecurrentTokenizer,
                         token_grid,
)
from .transformer import TokenTransformer
from .vt_module import VTModule

__all__ = [
    'FilterTokenizer', 'RecurrentTokenizer', 'PoolingTokenizer', 'ClusteringTokenizer',
    'TokenTransformer', 'Projector', 'VTModule', 'token_grid', 'attention',
    'explicit_attention', 'set_fused_attn', 'use_fused_attn',
]
