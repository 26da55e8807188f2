"""The demo dataset as mmseg reads it: a :class:`~mmseg.datasets.BaseSegDataset`."""
from __future__ import annotations

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .vtdemo_scenes import CLASSES, PALETTE

__all__ = ['VTDemoDataset']


@DATASETS.register_module()
class VTDemoDataset(BaseSegDataset):
    """Synthetic scenes of :mod:`vtseg.datasets.demo` (6 classes, PNG images and labels).

    Label 0 is a real class (background), so ``reduce_zero_label`` stays False. Use with
    ``data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train')``.
    """

    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = False, **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
