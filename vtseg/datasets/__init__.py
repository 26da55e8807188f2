"""vtseg datasets; importing this module registers them in ``mmseg.registry.DATASETS``.

The demo set's generator is :mod:`vtseg.datasets.demo` (``python -m vtseg.datasets.demo``).
"""
from .vtdemo_dataset import VTDemoDataset
from .vtdemo_scenes import CLASSES as VTDEMO_CLASSES
from .vtdemo_scenes import render_sample

__all__ = ['VTDemoDataset', 'VTDEMO_CLASSES', 'render_sample']
