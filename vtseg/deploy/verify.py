"""Check an exported segmentor against PyTorch on a real image, end to end.

The reference is mmseg's own prediction: the config's test pipeline (without labels), the
model's data preprocessor and ``test_step`` (inference, padding removal, resize to the
original size). The candidate is :class:`~vtseg.deploy.ort_inference.OnnxSegmentor` on the
same file: ONNX Runtime plus vtseg's NumPy pre- and post-processing. Both logits are
compared; for a labels export every differing pixel must be a near-tie in PyTorch's logits.
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from mmengine.config import Config
from torch import nn

from .from_config import test_pipeline
from .ort_inference import IMAGE_SUFFIXES, OnnxSegmentor
from .spec import DeployError

__all__ = ['Verification', 'default_image', 'pytorch_prediction', 'verify_export',
           'relative_error']


@dataclass
class Verification:
    """ONNX Runtime vs PyTorch on one image."""

    image: str
    shape: Tuple[int, int]
    max_abs: float
    rel: float  # max |ORT - PyTorch| / max |PyTorch| over the logits
    label_agreement: float  # fraction of pixels with the same label
    tolerance: float
    synthetic: bool = False

    @property
    def ok(self) -> bool:
        return self.rel <= self.tolerance

    def summary(self) -> str:
        what = 'a random image (no test image found; pass --image)' if self.synthetic \
            else self.image
        head = f'verified on {what} ({self.shape[0]}x{self.shape[1]}): ONNX Runtime vs PyTorch'
        agree = f'labels agree on {100 * self.label_agreement:.4f}% of pixels'
        if np.isnan(self.max_abs):  # labels export: differences must be near-ties
            return (f'{head} {agree}; largest relative logit gap at a differing pixel '
                    f'{self.rel:.3g} (tolerance {self.tolerance:g})')
        return (f'{head} logits max abs diff {self.max_abs:.3g}, max relative error '
                f'{self.rel:.3g} (tolerance {self.tolerance:g}), {agree}')


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """``max|candidate - reference| / max|reference|``."""
    scale = float(np.abs(reference).max())
    return float(np.abs(candidate - reference).max()) / max(scale, 1e-12)


def default_image(cfg: Config) -> Optional[str]:
    """The first image of the config's test set, or ``None`` when the data is not there."""
    try:
        ds = cfg.test_dataloader.dataset
        folder = osp.join(ds.get('data_root', '') or '', ds.data_prefix.get('img_path', ''))
        suffix = ds.get('img_suffix') or IMAGE_SUFFIXES
    except (AttributeError, KeyError):
        return None
    if not osp.isdir(folder):
        return None
    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(suffix))
    return osp.join(folder, names[0]) if names else None


def pytorch_prediction(model: nn.Module, cfg: Config, image: str) -> Tuple[np.ndarray,
                                                                          np.ndarray]:
    """mmseg's prediction for an image file: ``(logits (K, H, W), labels (H, W))``."""
    from mmcv.transforms import Compose  # noqa: PLC0415
    from mmengine.registry import init_default_scope  # noqa: PLC0415

    init_default_scope(cfg.get('default_scope', 'mmseg'))
    steps = [t for t in test_pipeline(cfg) if 'LoadAnnotations' not in str(t.get('type'))]
    data = Compose(steps)(dict(img_path=image))
    batch = dict(inputs=[data['inputs']], data_samples=[data['data_samples']])
    with torch.no_grad():
        sample = model.test_step(batch)[0]
    return (sample.seg_logits.data.float().numpy(),
            sample.pred_sem_seg.data[0].numpy().astype(np.int64))


def _random_image(shape, folder: str) -> str:
    import cv2  # noqa: PLC0415

    rng = np.random.default_rng(0)
    path = osp.join(folder, 'random.png')
    cv2.imwrite(path, rng.integers(0, 256, (int(shape[0]), int(shape[1]), 3), dtype=np.uint8))
    return path


def verify_export(model: nn.Module, cfg: Config, onnx_path: str, *,
                  image: Optional[str] = None, tolerance: float = 1e-4,
                  threads: Optional[int] = None) -> Verification:
    """Compare ``onnx_path`` in ONNX Runtime with ``model`` in PyTorch on ``image``.

    Without an image (or when a fixed-size export cannot take it) a random image of the
    export size is used, and the result says so.

    Raises:
        DeployError: the logits differ by more than ``tolerance`` (relative), or a labels
            export disagrees with PyTorch on a pixel that is not a near-tie.
    """
    seg = OnnxSegmentor(onnx_path, threads=threads)
    spec = seg.spec
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = image is None
        if image is not None and not osp.isfile(image):
            raise DeployError(f'verification image {image!r} does not exist')
        if image is not None and not spec.dynamic:
            from .processing import pipeline_resize_shape, read_image  # noqa: PLC0415

            hw = pipeline_resize_shape(read_image(image, spec.color_type).shape[:2], spec.resize)
            if list(spec.padded_shape(hw)) != spec.input_shape:
                synthetic = True  # a fixed-size export cannot take this image
        if synthetic:
            image = _random_image(spec.input_shape, tmp)
        ref_logits, ref_labels = pytorch_prediction(model, cfg, image)
        pred = seg.predict(image)
    if spec.mode == 'labels':
        agree = pred.labels == ref_labels
        top2 = np.sort(ref_logits, axis=0)[-2:]
        gap = (top2[1] - top2[0]) / max(float(np.abs(ref_logits).max()), 1e-12)
        rel = float(gap[~agree].max()) if (~agree).any() else 0.0
        result = Verification(image, ref_labels.shape, float('nan'), 0.0 if agree.all()
                              else rel, float(agree.mean()), tolerance, synthetic)
        if not result.ok:
            raise DeployError(f'ONNX Runtime labels differ from PyTorch on pixels that are no '
                              f'near-tie: {result.summary()}. The export is wrong; do not use '
                              f'{onnx_path!r}')
        return result
    rel = relative_error(pred.logits, ref_logits)
    result = Verification(image, ref_labels.shape,
                          float(np.abs(pred.logits - ref_logits).max()), rel,
                          float((pred.labels == ref_labels).mean()), tolerance, synthetic)
    if not result.ok:
        raise DeployError(f'ONNX Runtime differs from PyTorch: {result.summary()}. The export '
                          f'is wrong; do not use {onnx_path!r}')
    return result
