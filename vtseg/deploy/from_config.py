"""What an export takes from a config and a checkpoint: the model, checked, and its
:class:`~vtseg.deploy.spec.DeploySpec`.

Only what an exported graph reproduces exactly is accepted; everything else is refused
with the reason: segmentors other than ``EncoderDecoder``, ``test_cfg.mode='slide'``,
single-channel (sigmoid) heads, test pipelines with transforms other than loading,
``Resize`` / ``ResizeShortestEdge`` and packing, and checkpoints that do not fit the config.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.config import Config
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from torch import nn

from .spec import DeployError, DeploySpec

__all__ = ['load_segmentor', 'spec_for', 'test_pipeline', 'pipeline_steps']

#: Test-pipeline transforms that produce no input of the model (labels, packing).
_IGNORED = ('LoadAnnotations', 'PackSegInputs')


def _type_name(t: Any) -> str:
    t = t.get('type', '') if isinstance(t, dict) else t
    return t if isinstance(t, str) else getattr(t, '__name__', str(t))


def test_pipeline(cfg: Config) -> List[dict]:
    """The test set's pipeline (``test_dataloader.dataset.pipeline``, else ``test_pipeline``)."""
    try:
        return list(cfg.test_dataloader.dataset.pipeline)
    except (AttributeError, KeyError):
        pass
    if 'test_pipeline' in cfg:
        return list(cfg.test_pipeline)
    raise DeployError('the config has no test pipeline (test_dataloader.dataset.pipeline or '
                      'test_pipeline); the export needs it to know how images are loaded '
                      'and resized')


def pipeline_steps(pipeline: Sequence[dict]) -> Tuple[str, Optional[Dict[str, Any]]]:
    """``(color_type, resize)`` of a test pipeline, refusing what inference cannot redo."""
    color_type, resize = 'color', None
    unsupported = []
    for t in pipeline:
        name = _type_name(t)
        if name.endswith('LoadImageFromFile'):
            color_type = t.get('color_type', 'color')
            backend = t.get('imdecode_backend', 'cv2')
            if backend != 'cv2':
                unsupported.append(f'{name}(imdecode_backend={backend!r}): inference decodes '
                                   "with OpenCV; use imdecode_backend='cv2'")
        elif name.endswith(_IGNORED):
            continue
        elif name == 'Resize' and resize is None:
            if t.get('scale') is None or t.get('scale_factor') is not None:
                unsupported.append('Resize with scale_factor: give scale=(w, h)')
                continue
            scale = t['scale']
            scale = [int(scale), int(scale)] if isinstance(scale, (int, float)) else \
                [int(s) for s in scale]
            interp = t.get('interpolation', 'bilinear')
            if interp != 'bilinear':
                unsupported.append(f'Resize(interpolation={interp!r}): only bilinear')
            resize = dict(type='Resize', scale=scale, keep_ratio=bool(t.get('keep_ratio')))
        elif name == 'ResizeShortestEdge' and resize is None:
            resize = dict(type='ResizeShortestEdge', scale=int(t['scale']),
                          max_size=t.get('max_size'))
        else:
            unsupported.append(name)
    if unsupported:
        raise DeployError('the test pipeline has steps the exported model cannot reproduce: '
                          f'{"; ".join(unsupported)}. Supported: LoadImageFromFile, one '
                          'Resize(scale, keep_ratio) or ResizeShortestEdge, LoadAnnotations, '
                          'PackSegInputs (test-time augmentation is not exported)')
    return color_type, resize


def _check_model_cfg(cfg: Config) -> None:
    model = cfg.model
    kind = _type_name(model)
    if kind != 'EncoderDecoder':
        raise DeployError(f'model type {kind!r} is not supported: the export covers mmseg\'s '
                          'EncoderDecoder (backbone, neck, decode head)')
    mode = (model.get('test_cfg') or {}).get('mode', 'whole')
    if mode != 'whole':
        raise DeployError(
            f"test_cfg.mode={mode!r} is not supported: the exported graph runs whole-image "
            f"inference, which gives other results than {mode!r} inference. Export with "
            "--cfg-options model.test_cfg.mode=whole if whole-image inference is what you want")
    dp = model.get('data_preprocessor') or {}
    if _type_name(dp) not in ('SegDataPreProcessor', ''):
        raise DeployError(f'data preprocessor {_type_name(dp)!r} is not supported; use '
                          'SegDataPreProcessor')


def load_segmentor(config: Any, checkpoint: Optional[str],
                   cfg_options: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Config]:
    """Build ``config``'s model, load ``checkpoint`` into it (exact match) and set
    ``model.dataset_meta``; pretrained ``init_cfg`` entries are ignored (nothing is
    downloaded), SyncBN becomes BN. ``checkpoint=None`` keeps the config's random
    initialisation (for benchmarks and tests of the export itself).

    Raises:
        FileNotFoundError: a missing file.
        DeployError: unsupported model (see the module docstring), or a checkpoint that
            does not fit the config, listing the differing tensors.
    """
    from mmseg.registry import MODELS  # noqa: PLC0415

    import vtseg  # noqa: F401, PLC0415  (registers vtseg, checkpoint loading under torch>=2.6)

    from ..analysis.config_model import disable_pretrained, load_config  # noqa: PLC0415
    from ..checkpoint import (  # noqa: PLC0415
        check_checkpoint_file,
        compare_state_dicts,
        load_checkpoint,
    )

    cfg = load_config(config, cfg_options)
    _check_model_cfg(cfg)
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise DeployError(f'checkpoint {checkpoint!r} does not exist; pass a .pth file '
                              'written by tools/train.py for this config')
        try:
            check_checkpoint_file(checkpoint)
        except RuntimeError as err:
            raise DeployError(str(err)) from err
    disable_pretrained(cfg.model)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model = MODELS.build(cfg.model)
    if checkpoint is None:
        model.init_weights()
        model = revert_sync_batchnorm(model).eval()
        model.dataset_meta = _dataset_meta(cfg, None)
        return model, cfg
    model = revert_sync_batchnorm(model).eval()
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise DeployError(f'{checkpoint!r} holds no state dict')
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    report = compare_state_dicts(model, state)
    if not report.exact:
        raise DeployError(f'checkpoint {checkpoint!r} does not fit the config '
                          f'{getattr(cfg, "filename", config)!r}: {_differences(report)}. '
                          'Pass the config it was trained with (and the same --cfg-options)')
    model.load_state_dict(state, strict=False)  # exact match checked above (BN counters aside)
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    model.dataset_meta = _dataset_meta(cfg, meta.get('dataset_meta'))
    model.eval()
    return model, cfg


def _differences(report, listed: int = 3) -> str:
    """A one-line account of a :class:`~vtseg.checkpoint.StateDictReport` that is not exact."""
    parts = []
    if report.shape_mismatch:
        items = list(report.shape_mismatch.items())
        parts.append(f'{len(items)} tensors differ in shape (' + ', '.join(
            f'{k}: {tuple(c)} in the checkpoint, {tuple(m)} in the model'
            for k, (c, m) in items[:listed]) + (', ...)' if len(items) > listed else ')'))
    for keys, what in [(report.missing, 'model tensors are missing from the checkpoint'),
                       (report.unexpected, 'checkpoint tensors are not in the model')]:
        if keys:
            parts.append(f'{len(keys)} {what} ({", ".join(keys[:listed])}'
                         + (', ...)' if len(keys) > listed else ')'))
    return '; '.join(parts)


def _dataset_meta(cfg: Config, saved: Optional[dict]) -> dict:
    """Classes and palette: from the checkpoint (mmseg saves ``dataset_meta``), else from the
    test dataset class's ``METAINFO``; a palette mmseg would generate if none is given."""
    from mmseg.registry import DATASETS  # noqa: PLC0415

    meta = dict(saved or {})
    if 'classes' not in meta:
        try:
            cls = DATASETS.get(_type_name(cfg.test_dataloader.dataset))
            meta = {**dict(getattr(cls, 'METAINFO', {})), **meta}
        except (AttributeError, KeyError):
            pass
    classes = list(meta.get('classes') or [])
    palette = meta.get('palette')
    if classes and not palette:
        # mmseg's BaseSegDataset._update_palette for datasets without one
        # (np.random.seed(42); np.random.randint), without touching the global state
        rng = np.random.RandomState(42)  # noqa: NPY002  (mmseg's legacy generator)
        palette = rng.randint(0, 255, size=(len(classes), 3)).tolist()
    return dict(classes=classes, palette=[list(map(int, c)) for c in (palette or [])])


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def spec_for(model: nn.Module, cfg: Config, *, mode: str = 'logits', dynamic: bool = False,
             shape: Optional[Sequence[int]] = None, config_name: str = '',
             checkpoint: str = '') -> DeploySpec:
    """The :class:`DeploySpec` of ``model`` (built from ``cfg``) for an export.

    Raises:
        DeployError: unsupported pipeline or head, a fixed shape the padding can never give,
            or class names that do not match the head.
    """
    import mmseg  # noqa: PLC0415
    import torch  # noqa: PLC0415

    import vtseg  # noqa: PLC0415

    color_type, resize = pipeline_steps(test_pipeline(cfg))
    num_classes = int(model.decode_head.out_channels)
    if num_classes == 1:
        raise DeployError('a decode head with one output channel (sigmoid with a threshold) '
                          'is not supported; export a head with num_classes >= 2')
    if mode == 'labels' and resize is not None:
        raise DeployError('--output labels cannot be used with a test pipeline that resizes: '
                          'mmseg resizes the logits back to the original image, not the '
                          'labels; export --output logits')
    dp = model.data_preprocessor
    test_cfg = dict(getattr(dp, 'test_cfg', None) or {})
    pad_size = test_cfg.get('size')
    size_divisor = test_cfg.get('size_divisor')
    pad_val = float(getattr(dp, 'pad_val', 0))
    flip = bool(getattr(dp, 'channel_conversion', False))
    normalize = bool(getattr(dp, '_enable_normalize', False))
    # The config's values (the graph holds them as float32 buffers).
    dp_cfg = cfg.model.get('data_preprocessor') or {}
    mean = [float(v) for v in dp_cfg.get('mean', dp.mean.flatten().tolist())] \
        if normalize else None
    std = [float(v) for v in dp_cfg.get('std', dp.std.flatten().tolist())] \
        if normalize else None
    # mmseg pads the normalised image with pad_val: raw value = pad_val * std + mean of the
    # channel each raw channel becomes.
    pad_raw = [pad_val * (std[c] if std else 1.0) + (mean[c] if mean else 0.0)
               for c in range(3)]
    if flip:
        pad_raw = pad_raw[::-1]
    meta = model.dataset_meta or {}
    classes = list(meta.get('classes') or [f'class_{i}' for i in range(num_classes)])
    if len(classes) != num_classes:
        raise DeployError(f'the decode head predicts {num_classes} classes but the dataset '
                          f'has {len(classes)} ({classes[:4]}...); set num_classes to match')
    spec = DeploySpec(
        mode=mode, mean=mean, std=std, channel_flip=flip, color_type=color_type,
        resize=resize, pad_size=list(pad_size) if pad_size else None,
        size_divisor=int(size_divisor) if size_divisor else None, pad_raw=pad_raw,
        align_corners=bool(model.align_corners), classes=classes,
        palette=meta.get('palette') or [], dynamic=dynamic, num_classes=num_classes,
        source=dict(config=config_name, checkpoint=checkpoint or '',
                    checkpoint_sha256=_sha256(checkpoint) if checkpoint else '',
                    weights='checkpoint' if checkpoint else 'random initialisation',
                    vtseg=vtseg.__version__, mmseg=mmseg.__version__,
                    torch=torch.__version__))
    spec.input_shape = list(_input_shape(spec, cfg, shape))
    return spec


def _fixed_input(spec: DeploySpec) -> Optional[Tuple[int, int]]:
    """The graph input size every image gets, when the test pipeline fixes it."""
    if spec.resize and spec.resize['type'] == 'Resize' and not spec.resize['keep_ratio']:
        w, h = spec.resize['scale']
        return spec.padded_shape((h, w))
    return None


def _input_shape(spec: DeploySpec, cfg: Config, shape: Optional[Sequence[int]]):
    if shape is not None:
        h, w = int(shape[0]), int(shape[1])
        if h < 1 or w < 1:
            raise DeployError(f'--shape must be positive, got {h} {w}')
        if not spec.dynamic and spec.size_divisor and \
                (h % spec.size_divisor or w % spec.size_divisor):
            d = spec.size_divisor
            raise DeployError(
                f'--shape {h} {w} is not divisible by the data preprocessor\'s size_divisor '
                f'{d}: every image is padded to a multiple of {d}, so a fixed {h}x{w} model '
                f'could never be fed; use --shape {-(-h // d) * d} {-(-w // d) * d} or '
                '--dynamic')
        fixed = _fixed_input(spec)
        if not spec.dynamic and fixed is not None and fixed != (h, w):
            raise DeployError(
                f'--shape {h} {w}: the test pipeline resizes every image to '
                f'{fixed[0]}x{fixed[1]} (after padding), so a fixed {h}x{w} model could never '
                f'be fed; use --shape {fixed[0]} {fixed[1]} or --dynamic')
        return h, w
    fixed = _fixed_input(spec)
    if fixed is not None:
        return fixed
    crop = cfg.get('crop_size')
    if crop:
        return spec.padded_shape((int(crop[0]), int(crop[1])))
    return spec.padded_shape((512, 512))
