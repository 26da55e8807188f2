"""vtseg datasets; importing this module registers them in ``mmseg.registry.DATASETS``,
and the checked loaders, ``SkippedSamplesHook`` and ``ClassCountCheckHook``
(``docs/reliability.md``).

The demo set's generator is :mod:`vtseg.datasets.demo` (``python -m vtseg.datasets.demo``).
"""
from .checks import DatasetNotFoundError, check_data_cfg
from .class_check import ClassCountCheckHook, ClassCountError, check_class_counts
from .loading import (
    BadSampleError,
    CheckedLoadAnnotations,
    CheckedLoadImageFromFile,
    SkippedSamplesHook,
)
from .vtdemo_dataset import VTDemoDataset
from .vtdemo_scenes import CLASSES as VTDEMO_CLASSES
from .vtdemo_scenes import render_sample

__all__ = ['VTDemoDataset', 'VTDEMO_CLASSES', 'render_sample', 'CheckedLoadAnnotations',
           'CheckedLoadImageFromFile', 'DatasetNotFoundError', 'SkippedSamplesHook',
           'check_data_cfg', 'BadSampleError', 'ClassCountCheckHook', 'ClassCountError',
           'check_class_counts']
