"""Pre- and post-processing around an exported graph, in NumPy and OpenCV, as mmseg does it.

Each function reproduces one step of mmseg 1.x's whole-image inference outside PyTorch
(the tests compare them with mmcv's and mmseg's own): image decoding (mmcv's
``LoadImageFromFile``), the test pipeline's ``Resize`` / ``ResizeShortestEdge`` (mmcv's
``imresize``/``imrescale``: OpenCV bilinear), the data preprocessor's bottom/right
padding, the bilinear resize of the logits back to the original size (``F.interpolate``),
and the colour overlay of mmseg's ``SegLocalVisualizer``.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from .spec import DeployError, DeploySpec

__all__ = ['read_image', 'check_image', 'resize_image', 'pipeline_resize_shape', 'pad_image',
           'resize_logits', 'overlay', 'write_label_map']

# mmcv.image.io imread_flags
_COLOR_FLAGS = {
    'color': cv2.IMREAD_COLOR,
    'grayscale': cv2.IMREAD_GRAYSCALE,
    'unchanged': cv2.IMREAD_UNCHANGED,
    'color_ignore_orientation': cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_COLOR,
    'grayscale_ignore_orientation': cv2.IMREAD_IGNORE_ORIENTATION | cv2.IMREAD_GRAYSCALE,
}


def read_image(path: str, color_type: str = 'color') -> np.ndarray:
    """Decode an image file as mmcv's ``LoadImageFromFile`` (OpenCV backend): (H, W, C)
    BGR for ``color``."""
    if color_type not in _COLOR_FLAGS:
        raise DeployError(f'color_type {color_type!r} is not one of {sorted(_COLOR_FLAGS)}')
    if not os.path.isfile(path):
        raise DeployError(f'image {path!r} does not exist')
    data = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(data, _COLOR_FLAGS[color_type]) if data.size else None
    if img is None:
        raise DeployError(f'image {path!r} cannot be decoded by OpenCV (corrupt, or not an '
                          'image); pass a PNG, JPEG, BMP or TIFF file')
    return img


def check_image(img: np.ndarray, name: str = 'image', channels: int = 3) -> np.ndarray:
    """``img`` as (H, W, C) with ``channels`` channels; raise naming the problem otherwise."""
    if not isinstance(img, np.ndarray):
        raise DeployError(f'{name} must be a numpy array (H, W, {channels}), got '
                          f'{type(img).__name__}')
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise DeployError(f'{name} has shape {img.shape}; expected (H, W, {channels})')
    if img.shape[2] != channels:
        fix = ('convert it to BGR, e.g. cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)'
               if img.shape[2] == 1 else
               'drop the alpha channel, e.g. cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)'
               if img.shape[2] == 4 else f'give it {channels} channels')
        raise DeployError(f'{name} has {img.shape[2]} channels but the model takes '
                          f'{channels} (BGR); {fix}')
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise DeployError(f'{name} is empty: shape {img.shape}')
    return img


def _rescale_shape(shape: Sequence[int], scale: Sequence[int]) -> Tuple[int, int]:
    """mmcv ``rescale_size``: fit the long edge in max(scale), the short one in min(scale)."""
    h, w = shape
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def pipeline_resize_shape(shape: Sequence[int], resize: Optional[dict]) -> Tuple[int, int]:
    """(h, w) of an (H, W) image after the test pipeline's resize (mmcv's rounding)."""
    h, w = int(shape[0]), int(shape[1])
    if not resize:
        return h, w
    kind = resize['type']
    if kind == 'Resize':
        scale_w, scale_h = resize['scale']  # mmcv scales are (w, h)
        if not resize.get('keep_ratio', False):
            return int(scale_h), int(scale_w)
        return _rescale_shape((h, w), (scale_w, scale_h))
    if kind == 'ResizeShortestEdge':
        # mmseg ResizeShortestEdge._get_output_shape, then Resize(keep_ratio=True) to it
        size = float(resize['scale'])
        factor = size / min(h, w)
        new_h, new_w = (size, factor * w) if h < w else (factor * h, size)
        max_size = resize.get('max_size')
        if max_size and max(new_h, new_w) > max_size:
            factor = max_size / max(new_h, new_w)
            new_h, new_w = new_h * factor, new_w * factor
        return _rescale_shape((h, w), (int(new_w + 0.5), int(new_h + 0.5)))
    raise DeployError(f'unknown resize {kind!r} in the model metadata')


def resize_image(img: np.ndarray, resize: Optional[dict]) -> np.ndarray:
    """The test pipeline's resize of an (H, W, C) image: OpenCV bilinear, as mmcv."""
    h, w = pipeline_resize_shape(img.shape[:2], resize)
    if (h, w) == img.shape[:2]:
        return img
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return out[..., None] if out.ndim == 2 else out


def pad_image(img: np.ndarray, spec: DeploySpec) -> Tuple[np.ndarray, Tuple[int, int]]:
    """Pad an (h, w, C) image at the bottom and right as the data preprocessor's test-time
    ``stack_batch`` does; returns the padded image and the unpadded (h, w)."""
    h, w = img.shape[:2]
    ph, pw = spec.padded_shape((h, w))
    if (ph, pw) == (h, w):
        return img, (h, w)
    out = np.empty((ph, pw, img.shape[2]), dtype=np.float32)
    out[...] = np.asarray(spec.pad_raw[:img.shape[2]], dtype=np.float32)
    out[:h, :w] = img
    return out, (h, w)


def _axis_weights(n_in: int, n_out: int, align_corners: bool):
    """Source indices and weights of ``F.interpolate(mode='bilinear')`` along one axis."""
    # float32 arithmetic, as PyTorch's CPU kernel for float32 maps (area_pixel_compute_*)
    f32 = np.float32
    dst = np.arange(n_out, dtype=f32)
    if align_corners:
        scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0)
        src = dst * scale
    else:
        scale = f32(n_in) / f32(n_out)
        src = np.maximum(scale * (dst + f32(0.5)) - f32(0.5), f32(0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0.astype(f32)).astype(f32)
    return i0, i1, frac


def resize_logits(logits: np.ndarray, shape: Sequence[int],
                  align_corners: bool = False) -> np.ndarray:
    """Bilinear resize of (K, H, W) scores to ``shape`` (h, w), as ``F.interpolate``."""
    k, h_in, w_in = logits.shape
    h, w = int(shape[0]), int(shape[1])
    if (h, w) == (h_in, w_in):
        return logits
    i0, i1, f = _axis_weights(h_in, h, align_corners)
    rows = logits[:, i0] * (1 - f)[None, :, None] + logits[:, i1] * f[None, :, None]
    j0, j1, g = _axis_weights(w_in, w, align_corners)
    return rows[:, :, j0] * (1 - g) + rows[:, :, j1] * g


def overlay(img_bgr: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]],
            alpha: float = 0.8) -> np.ndarray:
    """Colour a label map over the image as mmseg's ``SegLocalVisualizer`` (``alpha=0.8``),
    without the class-name captions; BGR in, BGR out (the palette is RGB)."""
    img = check_image(img_bgr, 'image')
    colors = np.asarray(palette, dtype=np.uint8)[:, ::-1]  # RGB -> BGR
    if labels.max(initial=0) >= len(colors):
        raise DeployError(f'label {int(labels.max())} has no colour: the palette has '
                          f'{len(colors)} entries')
    color_seg = colors[labels]
    return (img.astype(np.float64) * (1 - alpha) + color_seg * alpha).astype(np.uint8)


def write_label_map(path: str, labels: np.ndarray) -> None:
    """Save class indices as a single-channel PNG (uint8, or uint16 above 255 classes)."""
    dtype = np.uint8 if labels.max(initial=0) <= 255 else np.uint16
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, labels.astype(dtype)):
        raise DeployError(f'cannot write {path!r}')
