"""The models the benchmark times, built from the project's configs without pretrained
weights: the necks alone (fed random maps of the backbone's output shapes) or whole
segmentors."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..config_model import build_model_from_config, load_config
from .settings import NECKS

__all__ = ['config_path', 'backbone_shapes', 'NeckOnImage', 'Laterals']


def config_path(config_dir: str, neck: str, depth: int, dataset: str) -> Path:
    """``{config_dir}/{fpn|vtfpn}_r{depth}_{dataset}.py``; raises if it does not exist."""
    path = Path(config_dir) / f'{NECKS[neck]}_r{depth}_{dataset}.py'
    if not path.is_file():
        raise FileNotFoundError(f'config {str(path)!r} not found: run from the repository '
                                'root or pass --config-dir, and --dataset with a config '
                                f'family that exists (e.g. coco-stuff164k or lip)')
    return path


def backbone_shapes(path: Path, size: Tuple[int, int]) -> List[Tuple[int, int, int]]:
    """(C, H, W) of each backbone output of ``path``'s model for an (H, W) image.

    The backbone runs on the meta device: shapes only, no memory, no arithmetic.
    """
    cfg = load_config(path)
    with torch.device('meta'):
        backbone = build_model_from_config(cfg, part='backbone', device='meta')[0]
        feats = backbone(torch.empty(1, 3, *size))
    return [tuple(f.shape[1:]) for f in feats]


class NeckOnImage(nn.Module):
    """Runs ``neck`` on zero feature maps shaped like the backbone's, for FLOP counting."""

    def __init__(self, neck: nn.Module, shapes: Sequence[Tuple[int, int, int]]) -> None:
        super().__init__()
        self.neck = neck
        self.shapes = list(shapes)

    def forward(self, img: Tensor) -> Tuple[Tensor, ...]:
        return self.neck([img.new_zeros(img.shape[0], *s) for s in self.shapes])


class Laterals(nn.Module):
    """A neck's lateral 1x1 convs alone, each on its own input: VT-FPN's floor.

    Both necks run these convs (the work FPN does too), so no neck can be faster than
    them; the benchmark times this module in the same forms as the neck.
    """

    def __init__(self, neck: nn.Module) -> None:
        super().__init__()
        self.lateral_convs = neck.lateral_convs

    def forward(self, inputs: Sequence[Tensor]) -> Tuple[Tensor, ...]:
        return tuple(conv(x) for conv, x in zip(self.lateral_convs, inputs))
