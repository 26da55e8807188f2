"""Loading transforms that name the bad file, and an option to skip bad samples.

Drop-in replacements for ``LoadImageFromFile`` (mmcv) and ``LoadAnnotations`` (mmseg):

* a missing, truncated or undecodable image or label map raises :class:`BadSampleError`
  naming the file (mmcv's image loader names it, but mmseg's label loader fails with
  ``OSError: image file is truncated`` or ``'NoneType' object has no attribute 'squeeze'``);
* a label map whose size differs from its image's is an error too (mmseg would crop both
  with the image's size, or a resize that ignores the aspect ratio would stretch it to fit,
  and fail or mislabel pixels later, far from the cause);
* the label map is checked as decoded, before mmseg's cast to 8 bits: an RGB label, a
  16-bit label with values above 255 (which the cast wraps to other classes) or floats are
  errors;
* with ``num_classes`` set, label values outside ``0..num_classes-1`` (other than
  ``ignore_index``) are an error: otherwise the loss fails with an index error, or a CUDA
  device-side assert, that names no file, and at test time mmseg's ``IoUMetric`` drops
  those pixels and reports a metric;
* an image with a side under ``min_size`` pixels (default 8; a 1x1 "image") is an error.

Every shipped config uses them (``configs/_base_/datasets/*.py``, ``configs/demo``).

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

import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
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

    def _setup_errors(self, on_error: str, min_size: int) -> None:
        self.on_error = _check_on_error(type(self).__name__, on_error)
        self.tally = _tally_file() if on_error == 'skip' else None
        if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 1:
            raise ValueError(f'{type(self).__name__}: min_size must be a positive integer '
                             f'(pixels), got {min_size!r}')
        self.min_size = min_size

    def _too_small(self, path: str, shape) -> Optional[str]:
        """Why an image of ``shape`` (H, W, ...) is degenerate, or None."""
        h, w = shape[:2]
        if min(h, w) >= self.min_size:
            return None
        return (f'image is {h}x{w} (HxW), smaller than min_size={self.min_size} pixels on a '
                f'side (a broken or placeholder file?); lower min_size in '
                f'{type(self).__name__} if such images are meant')

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


class _BadLabel(Exception):
    """A label map that decodes but cannot be used (raised inside ``_load_seg_map``)."""


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(_SkipOrRaise, LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` with errors that name the file, or skipping.

    Args:
        on_error: ``'raise'`` (default) a :class:`BadSampleError` naming the file, or
            ``'skip'`` the sample with a warning (training only, see module docstring).
        min_size: an image with a side shorter than this many pixels is a bad sample
            (a 1x1 or 2x500 "image" is a broken export, not a picture); 1 accepts any.
        **kwargs: as mmcv's ``LoadImageFromFile`` (``to_float32``, ``color_type``,
            ``imdecode_backend``, ``backend_args``).
    """

    def __init__(self, *, on_error: str = 'raise', min_size: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self._setup_errors(on_error, min_size)

    def transform(self, results: dict) -> Optional[dict]:
        try:
            out = super().transform(results)
        except Exception as e:  # missing file, truncated or undecodable bytes
            return self._bad(results['img_path'], f'cannot read image ({e!r})')
        if out is None:  # ignore_empty=True and the file is missing
            return None
        small = self._too_small(results['img_path'], out['img'].shape)
        return out if small is None else self._bad(results['img_path'], small)

    def __repr__(self) -> str:
        return f'{super().__repr__()[:-1]}, on_error={self.on_error!r}, min_size={self.min_size})'


@TRANSFORMS.register_module()
class CheckedLoadAnnotations(_SkipOrRaise, LoadAnnotations):
    """mmseg's ``LoadAnnotations`` that checks the label map as decoded, then against its
    image and the classes.

    Checked on the raw decoded file, before mmseg's cast to ``uint8`` (which wraps 16-bit
    values: 300 becomes class 44) and before any resize of the pipeline (the LIP configs
    warp images to 473x473 and would stretch a label of another size to fit):

    * one channel: an RGB (or RGBA) label map is a colour picture, not class indices;
    * integer values in ``0..255`` (a 16-bit map above 255, floats, negatives are errors);
    * the same height and width as its image (``results['ori_shape']``, the image as
      loaded, whatever resize ran before this transform);
    * with ``num_classes`` set, values in ``0..num_classes-1`` or ``ignore_index`` (after
      ``label_map`` and ``reduce_zero_label``).

    Unlike mmseg's loader it keeps a 1-pixel-high or -wide map two-dimensional (mmseg's
    ``squeeze()`` turns a 1xW map into a vector that fails later).

    Args:
        on_error: ``'raise'`` or ``'skip'``, as :class:`CheckedLoadImageFromFile`.
        num_classes: if given, label values must lie in ``0..num_classes-1`` or equal
            ``ignore_index``.
        ignore_index: the label of ignored pixels (mmseg: 255).
        min_size: a sample whose image (``results['ori_shape']``) has a side shorter than
            this is bad, as in :class:`CheckedLoadImageFromFile` (test pipelines load the
            image with mmcv's ``LoadImageFromFile``, the name mmseg's inference API needs).
        **kwargs: as mmseg's ``LoadAnnotations`` (``reduce_zero_label``,
            ``imdecode_backend``, ``backend_args``).

    Without ``seg_map_path`` and ``seg_fields`` in ``results`` (inference through
    ``mmseg.apis``) there is no label: the transform passes the sample on.

    Shape:
        - decodes (H, W) or (H, W, C) from the file; writes ``results['gt_seg_map']``
          (H, W) uint8 and compares it with ``results['ori_shape']`` (H, W).
    """

    def __init__(self, *, on_error: str = 'raise', num_classes: Optional[int] = None,
                 ignore_index: int = 255, min_size: int = 8, **kwargs) -> None:
        super().__init__(**kwargs)
        self._setup_errors(on_error, min_size)
        if num_classes is not None and (not isinstance(num_classes, int)
                                        or isinstance(num_classes, bool) or num_classes <= 0):
            raise ValueError('CheckedLoadAnnotations: num_classes must be a positive integer '
                             f'or None, got {num_classes!r}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def _decode(self, path: str) -> np.ndarray:
        """The label map as stored: (H, W) of its own dtype; raises :class:`_BadLabel`."""
        data = fileio.get(path, backend_args=self.backend_args)
        raw = mmcv.imfrombytes(data, flag='unchanged', backend=self.imdecode_backend)
        if raw is None:
            raise ValueError('the file cannot be decoded as an image')
        if raw.ndim == 3 and raw.shape[2] == 1:
            raw = raw[:, :, 0]  # (H, W, 1) -> (H, W); a 1xW map stays (1, W)
        if raw.ndim == 3:
            same = raw.shape[2] >= 3 and all(np.array_equal(raw[..., 0], raw[..., c])
                                             for c in range(1, 3))
            hint = ('its colour channels are equal: save one of them as a single-channel '
                    '(greyscale) PNG' if same else 'convert the colours to class indices '
                    '(e.g. with the dataset\'s palette) and save them as a single-channel '
                    'PNG')
            if self.imdecode_backend == 'cv2':
                hint += ("; a palette PNG read with imdecode_backend='cv2' is expanded to "
                         "colours, the default 'pillow' keeps its indices")
            raise _BadLabel(f'label map has {raw.shape[2]} channels ({raw.shape[0]}x'
                            f'{raw.shape[1]}x{raw.shape[2]}, a colour image); a label map '
                            f'holds one class index per pixel: {hint}')
        if raw.ndim != 2:
            raise _BadLabel(f'label map has shape {raw.shape}, not (H, W)')
        if raw.dtype == np.bool_:
            return raw.astype(np.uint8)
        if not np.issubdtype(raw.dtype, np.integer):
            raise _BadLabel(f'label map holds {raw.dtype} values; class indices are '
                            'integers (save it as an 8-bit PNG)')
        if raw.dtype != np.uint8 and raw.size:
            low, high = int(raw.min()), int(raw.max())
            if low < 0 or high > 255:
                wrapped = np.unique(raw[(raw < 0) | (raw > 255)])
                examples = ', '.join(f'{int(v)} -> {int(v) % 256}' for v in wrapped[:4])
                raise _BadLabel(
                    f'{raw.dtype} label map with values {low}..{high} outside 0..255; mmseg '
                    f'keeps labels as 8 bits and would wrap them to other classes '
                    f'({examples}). Map them to train ids 0..N-1 (255 = ignored) and save '
                    'an 8-bit PNG')
        return raw.astype(np.uint8)

    def _load_seg_map(self, results: dict) -> None:
        """mmseg 1.2's ``LoadAnnotations._load_seg_map``, decoding through :meth:`_decode`."""
        gt_semantic_seg = self._decode(results['seg_map_path'])
        if self.reduce_zero_label is None:
            self.reduce_zero_label = results['reduce_zero_label']
        if self.reduce_zero_label != results['reduce_zero_label']:
            raise ValueError(f'the dataset has reduce_zero_label='
                             f"{results['reduce_zero_label']} but {type(self).__name__} "
                             f'has reduce_zero_label={self.reduce_zero_label}; set it in one '
                             'place (the dataset)')
        if self.reduce_zero_label:  # as mmseg, avoiding the underflow
            gt_semantic_seg[gt_semantic_seg == 0] = 255
            gt_semantic_seg = gt_semantic_seg - 1
            gt_semantic_seg[gt_semantic_seg == 254] = 255
        if results.get('label_map', None) is not None:  # custom classes, as mmseg
            copy = gt_semantic_seg.copy()
            for old_id, new_id in results['label_map'].items():
                gt_semantic_seg[copy == old_id] = new_id
        results['gt_seg_map'] = gt_semantic_seg
        results['seg_fields'].append('gt_seg_map')

    def transform(self, results: dict) -> Optional[dict]:
        if 'seg_map_path' not in results and 'seg_fields' not in results:
            return results  # inference (mmseg's inference_model, MMSegInferencer): no label
        path = results.get('seg_map_path')
        if path is None:
            raise BadSampleError(f"{results.get('img_path', '?')}: the sample has no label "
                                 'map path; set data_prefix.seg_map_path in the dataset '
                                 'config')
        img_shape = results.get('ori_shape')
        if img_shape is not None:  # the image as loaded, before any resize
            small = self._too_small(results.get('img_path', '?'), img_shape)
            if small is not None:
                return self._bad(results.get('img_path', '?'), small)
        try:
            out = super().transform(results)
        except _BadLabel as e:
            return self._bad(path, str(e))
        except Exception as e:  # missing file, truncated or undecodable bytes
            return self._bad(path, f'cannot read label map ({e!r})')
        seg = out['gt_seg_map']  # (H, W) uint8
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
                f'num_classes={self.num_classes}, ignore_index={self.ignore_index}, '
                f'min_size={self.min_size})')


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
