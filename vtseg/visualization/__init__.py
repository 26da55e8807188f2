"""Pictures of what vtseg models do: token attention overlays and grids."""
from .attention_maps import (
    attention_grid,
    colorize,
    grid_layout,
    grid_size,
    overlay,
    save_attention_pictures,
)

__all__ = ['colorize', 'overlay', 'grid_layout', 'grid_size', 'attention_grid',
           'save_attention_pictures']
