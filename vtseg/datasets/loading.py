"""Loading transforms that name the bad file, and an option to skip bad samples.

Drop-in replacements for ``LoadImageFromFile`` (mmcv) and ``LoadAnnotations`` (mmseg):

* a missing, truncated or undecodable image or label map raises :class:`BadSampleError`
  naming the file (mmcv's image loader names it, but mmseg's label loader fails with
  ``OSError: image file is truncated`` or ``'NoneType' object has no attribute 'squeeze'``);
* a label map whose size differs from its image's is an error too (mmseg would crop both
  with the image's size and fail or mislabel pixels later, far from the cause);
* with ``num_classes`` set, label values outside ``0..num_classes-1`` (other than
  ``ignore_index``) are an error: otherwise the loss fails with an index error, or a CUDA
  device-side assert, that names no file.

``on_error='skip'`` turns these errors into a logged warning and returns ``None``, which
mmengine's ``BaseDataset.__getitem__`` answers by drawing another sample (up to
``max_refetch`` times). Skips are tallied across dataloader workers;
:class:`SkippedSamplesHook` logs the count and the files at the end of training. Skipping
only works in training pipelines: a test pipeline that returns ``None`` is an error in
mmengine (every test sample must count), so at test time the error names the file instead.

Example (training pipeline)::

    train_pipeline = [
        dict(type='CheckedLoadImageFromFile', on_error='skip'),
        dict(type='CheckedLoadAnnotations', on_error='skip', num_classes=20),
        ...
    ]
    custom_hooks = [dict(type='SkippedSamplesHook')]
"""
from __future__ import annotations

import atexit
import logging
import os
import tempfile
from typing import List, Optional, Tuple

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import HOOKS, TRANSFORMS

__all__ = ['BadSampleError', 'CheckedLoadImageFromFile', 'CheckedLoadAnnotations',
           'SkippedSamplesHook', 'skipped_samples']

_ON_ERROR = ('raise', 'skip')
_tally: Optional[str] = None  # file every process appends skipped samples to
_tally_owner: Optional[int] = None  # pid of the process that created it


class BadSampleError(RuntimeError):
    """An image or label map that cannot be used; the message names the file."""


def _tally_file() -> str:
    """The per-run file that collects skipped samples (created by the main process).

    Dataloader workers append one line per skip; appends of a short line to a file opened
    with ``O_APPEND`` do not interleave, so no lock is needed.
    """
    global _tally, _tally_owner
    if _tally is None:
        fd, _tally = tempfile.mkstemp(prefix='vtseg_skipped_', suffix='.tsv')
        os.close(fd)
        _tally_owner = os.getpid()
        atexit.register(_remove_tally)
    return _tally


def _remove_tally() -> None:
    if _tally is not None and os.getpid() == _tally_owner and os.path.exists(_tally):
        os.remove(_tally)


def skipped_samples() -> List[Tuple[str, str]]:
    """``(file, reason)`` for every sample skipped so far in this run, all workers."""
    if _tally is None or not os.path.exists(_tally):
        return []
    with open(_tally, encoding='utf-8') as f:
        return [tuple(line.rstrip('\n').split('\t', 1)) for line in f if '\t' in line]


def _check_on_error(owner: str, on_error: str) -> str:
    if on_error not in _ON_ERROR:
        raise ValueError(f'{owner}: on_error must be one of {_ON_ERROR}, got {on_error!r}')
    return on_error


class _SkipOrRaise:
    """Mixin: turn a problem with ``path`` into an error or a tallied skip."""

    on_error: str
    tally: Optional[str]

    def _setup_errors(self, on_error: str) -> None:
        self.on_error = _check_on_error(type(self).__name__, on_error)
        self.tally = _tally_file() if on_error == 'skip' else None

    def _bad(self, path: str, reason: str) -> None:
        if self.on_error == 'raise':
            raise BadSampleError(
                f'{path}: {reason}. Replace or delete this file, or set '
                f"on_error='skip' in {type(self).__name__} to skip such samples during "
                'training.')
        reason = ' '.join(reason.split())  # one line per entry in the tally
        with open(self.tally, 'a', encoding='utf-8') as f:
            f.write(f'{path}\t{reason}\n')
        print_log(f'Skipped sample {path}: {reason}', logger='current', level=logging.WARNING)


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(_SkipOrRaise, LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` with errors that name the file, or skipping.

    Args:
        on_error: ``'raise'`` (default) a :class:`BadSampleError` naming the file, or
            ``'skip'`` the sample with a warning (training only, see module docstring).
        **kwargs: as mmcv's ``LoadImageFromFile`` (``to_float32``, ``color_type``,
            ``imdecode_backend``, ``backend_args``).
    """

    def __init__(self, *, on_error: str = 'raise', **kwargs) -> None:
        super().__init__(**kwargs)
        self._setup_errors(on_error)

    def transform(self, results: dict) -> Optional[dict]:
        try:
            out = super().transform(results)
        except Exception as e:  # missing file, truncated or undecodable bytes
            return self._bad(results['img_path'], f'cannot read image ({e!r})')
        return out

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}, on_error={self.on_error!r})'


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(_SkipOrRaise, LoadAnnotations):
    """mmseg's ``LoadAnnotations`` that also checks the label map against its image.

    Args:
        on_error: ``'raise'`` or ``'skip'``, as :class:`CheckedLoadImageFromFile`.
        num_classes: if given, label values must lie in ``0..num_classes-1`` or equal
            ``ignore_index`` (after ``reduce_zero_label`` and ``label_map``).
        ignore_index: the label of ignored pixels (mmseg: 255).
        **kwargs: as mmseg's ``LoadAnnotations`` (``reduce_zero_label``,
            ``imdecode_backend``, ``backend_args``).

    Shape:
        - reads ``results['gt_seg_map']`` (H, W) and compares it with
          ``results['ori_shape']`` (H, W) set by the image loader.
    """

    def __init__(self, *, on_error: str = 'raise', num_classes: Optional[int] = None,
                 ignore_index: int = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        self._setup_errors(on_error)
        if num_classes is not None and (not isinstance(num_classes, int)
                                        or isinstance(num_classes, bool) or num_classes <= 0):
            raise ValueError('CheckedLoadAnnotations: num_classes must be a positive integer '
                             f'or None, got {num_classes!r}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> Optional[dict]:
        path = results['seg_map_path']
        try:
            out = super().transform(results)
        except Exception as e:  # missing file, truncated or undecodable bytes
            return self._bad(path, f'cannot read label map ({e!r})')
        seg = out['gt_seg_map']  # (H, W) uint8
        img_shape = out.get('ori_shape')
        if img_shape is not None and tuple(seg.shape[:2]) != tuple(img_shape[:2]):
            return self._bad(path, f'label map is {seg.shape[0]}x{seg.shape[1]} (HxW) but its '
                             f"image {out.get('img_path', '?')} is "
                             f'{img_shape[0]}x{img_shape[1]}; both must have the same size')
        if self.num_classes is not None:
            values = np.unique(seg)
            bad = values[(values >= self.num_classes) & (values != self.ignore_index)]
            if bad.size:
                return self._bad(path, f'label values {bad[:8].tolist()} are outside the '
                                 f'{self.num_classes} classes (0..{self.num_classes - 1}) '
                                 f'and are not ignore_index={self.ignore_index}; check that '
                                 'the label maps are train ids for this dataset')
        return out

    def __repr__(self) -> str:
        return (f'{super().__repr__()[:-1]}, on_error={self.on_error!r}, '
                f'num_classes={self.num_classes}, ignore_index={self.ignore_index})')


@HOOKS.register_module()
class SkippedSamplesHook(Hook):
    """Log how many samples the checked loaders skipped, and which files, after training.

    Args:
        max_listed: how many distinct files to name in the log.
    """

    priority = 'VERY_LOW'

    def __init__(self, max_listed: int = 20) -> None:
        self.max_listed = max_listed

    def after_train(self, runner) -> None:
        skipped = skipped_samples()
        if not skipped:
            runner.logger.info('Skipped samples: 0.')
            return
        files = sorted({path for path, _ in skipped})
        reasons = dict(skipped)
        listed = '\n'.join(f'  {p}: {reasons[p]}' for p in files[:self.max_listed])
        more = f'\n  ... and {len(files) - self.max_listed} more' \
            if len(files) > self.max_listed else ''
        runner.logger.warning(f'Skipped samples: {len(skipped)} times, {len(files)} distinct '
                              f'files (each skip drew another sample):\n{listed}{more}')
