"""vtseg datasets; importing this module registers them in ``mmseg.registry.DATASETS``,
and the checked loaders and ``SkippedSamplesHook`` (``docs/reliability.md``).

The demo set's generator is :mod:`vtseg.datasets.demo` (``python -m vtseg.datasets.demo``).
"""
from .checks import DatasetNotFoundError, check_data_cfg
from .loading import CheckedLoadAnnotations, CheckedLoadImageFromFile, SkippedSamplesHook
from .vtdemo_dataset import VTDemoDataset
from .vtdemo_scenes import CLASSES as VTDEMO_CLASSES
from .vtdemo_scenes import render_sample

__all__ = ['VTDemoDataset', 'VTDEMO_CLASSES', 'render_sample', 'CheckedLoadAnnotations',
           'CheckedLoadImageFromFile', 'DatasetNotFoundError', 'SkippedSamplesHook',
           'check_data_cfg']
