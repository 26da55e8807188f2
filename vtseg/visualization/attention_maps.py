"""Draw token attention maps over an image (paper Figure 5): overlays, grids, files.

Colours come from a matplotlib colormap ('jet' by default: red high, blue low); each map is
scaled on its own before colouring, so every picture uses the full colour range and shows
*where* a token looks; how concentrated it is is given by its entropy (in the grid labels
and the tool's table). Two scales:

* ``'linear'`` (default, as in the paper's figure): min-max of the map;
* ``'log'``: ``log10(a / max)`` over ``LOG_DECADES`` decades, so that very concentrated
  maps (a few hot pixels, entropy of a few nats) still show where the rest of the mass is.
 Images are BGR ``uint8`` arrays, as ``mmcv.imread`` returns
them, and are written with ``mmcv.imwrite``.

Shape shorthand: (H, W) the image, L tokens of one level.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import cv2
import mmcv
import numpy as np
from matplotlib import colormaps
from torch import Tensor

from ..analysis.attention import LevelMaps, attention_entropy, uniform_entropy

__all__ = ['colorize', 'overlay', 'grid_layout', 'grid_size', 'attention_grid',
           'save_attention_pictures']

ArrayLike = Union[np.ndarray, Tensor]

# Grid layout, in pixels.
_PAD = 6        # margin around and between tiles
_TITLE_H = 26   # title line at the top
_LABEL_H = 18   # label line above each tile
_LEGEND_H = 30  # colour bar with "low" / "high" at the bottom
_FONT = cv2.FONT_HERSHEY_SIMPLEX
#: Dynamic range of the 'log' scale: values below max / 10**LOG_DECADES get the lowest colour.
LOG_DECADES = 3
SCALES = ('linear', 'log')
_TITLE_SCALE, _LABEL_SCALE = 0.5, 0.4


def _numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _scale(m: np.ndarray, scale: str) -> np.ndarray:
    """Map values to [0, 1]: ``'linear'`` min-max, ``'log'`` decades below the maximum."""
    if scale == 'log':
        top = m.max()
        if top <= 0:
            return np.zeros_like(m)
        floor = top * 10.0 ** -LOG_DECADES
        return np.log10(np.maximum(m, floor) / top) / LOG_DECADES + 1.0
    if scale != 'linear':
        raise ValueError(f'scale must be one of {SCALES}, got {scale!r}')
    span = m.max() - m.min()
    return (m - m.min()) / span if span > 0 else np.zeros_like(m)


def colorize(attn_map: ArrayLike, cmap: str = 'jet', scale: str = 'linear') -> np.ndarray:
    """One map -> BGR colours: scaled to [0, 1] (see the module docstring), then the
    matplotlib colormap ``cmap``.

    A constant map (no maximum to show) is drawn in the colormap's lowest colour.

    Shape:
        - attn_map: (H, W) -> (H, W, 3) uint8 BGR
    """
    m = _numpy(attn_map)
    if m.ndim != 2:
        raise ValueError(f'colorize expects one (H, W) map, got shape {m.shape}')
    scaled = _scale(m, scale)
    rgba = colormaps[cmap](scaled, bytes=True)  # (H, W, 4) uint8 RGBA
    return np.ascontiguousarray(rgba[..., 2::-1])  # RGB -> BGR


def overlay(image: np.ndarray, attn_map: ArrayLike, alpha: float = 0.5,
            cmap: str = 'jet', scale: str = 'linear') -> np.ndarray:
    """Blend the coloured map with the image: ``(1 - alpha) * image + alpha * colours``.

    Shape:
        - image: (H, W, 3) uint8 BGR, attn_map: (H, W) -> (H, W, 3) uint8 BGR
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must lie in [0, 1], got {alpha}')
    if image.ndim != 3 or tuple(attn_map.shape) != image.shape[:2]:
        raise ValueError(f'overlay: map of shape {tuple(attn_map.shape)} does not cover the '
                         f'image of shape {image.shape}; bring it to image resolution first '
                         '(vtseg.analysis.attention.to_image_space)')
    heat = colorize(attn_map, cmap, scale).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def grid_layout(num_tiles: int) -> Tuple[int, int]:
    """(rows, cols) of a grid of ``num_tiles`` tiles: 2 -> 1x2, 8 -> 2x4, 16 -> 4x4."""
    if num_tiles <= 0:
        raise ValueError(f'grid_layout: num_tiles must be positive, got {num_tiles}')
    cols = min(num_tiles, max(4, math.ceil(math.sqrt(num_tiles))))
    return math.ceil(num_tiles / cols), cols


def _tile_shape(image_shape: Sequence[int], tile_size: int) -> Tuple[int, int]:
    """(h, w) of one tile: the image scaled so its longer side is ``tile_size``."""
    h, w = image_shape[:2]
    scale = tile_size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def grid_size(image_shape: Sequence[int], num_tiles: int, tile_size: int = 256,
              title: str = '') -> Tuple[int, int]:
    """(height, width) of the picture :func:`attention_grid` draws.

    Tiles keep the image's aspect ratio with the longer side ``tile_size``; the grid is
    widened if the title would not fit.
    """
    rows, cols = grid_layout(num_tiles)
    th, tw = _tile_shape(image_shape, tile_size)
    width = max(cols * tw + (cols + 1) * _PAD, _text_width(title, _TITLE_SCALE) + 2 * _PAD)
    height = _TITLE_H + rows * (_LABEL_H + th + _PAD) + _LEGEND_H
    return height, width


def attention_grid(image: np.ndarray, maps: ArrayLike, labels: Sequence[str],
                   title: str = '', *, tile_size: int = 256, alpha: float = 0.5,
                   cmap: str = 'jet', scale: str = 'linear') -> np.ndarray:
    """All maps of one level in one labelled picture, with a colour bar.

    Args:
        image: (H, W, 3) uint8 BGR image.
        maps: (L, H, W) maps at image resolution.
        labels: one label per map, written above its tile.
        title: written at the top.
        tile_size: longer side of each tile in pixels.
        alpha, cmap, scale: as in :func:`overlay`.

    Shape:
        - returns (*grid_size(...), 3) uint8 BGR
    """
    maps = _numpy(maps)
    if len(labels) != len(maps):
        raise ValueError(f'attention_grid: {len(labels)} labels for {len(maps)} maps')
    rows, cols = grid_layout(len(maps))
    th, tw = _tile_shape(image.shape, tile_size)
    height, width = grid_size(image.shape, len(maps), tile_size, title)
    canvas = np.full((height, width, 3), 255, np.uint8)
    text_style = dict(fontFace=_FONT, color=(0, 0, 0), thickness=1, lineType=cv2.LINE_AA)
    cv2.putText(canvas, title, (_PAD, _TITLE_H - 8), fontScale=_TITLE_SCALE, **text_style)
    for k, (m, label) in enumerate(zip(maps, labels)):
        r, c = divmod(k, cols)
        x0 = _PAD + c * (tw + _PAD)
        y0 = _TITLE_H + r * (_LABEL_H + th + _PAD)
        cv2.putText(canvas, label, (x0, y0 + _LABEL_H - 5), fontScale=_LABEL_SCALE,
                    **text_style)
        tile = mmcv.imresize(overlay(image, m, alpha, cmap, scale), (tw, th), interpolation='area')
        canvas[y0 + _LABEL_H:y0 + _LABEL_H + th, x0:x0 + tw] = tile
    # Colour bar: the colormap from low (left) to high (right).
    low, high = ('low', 'high') if scale == 'linear' else (f'max/1e{LOG_DECADES}', 'max')
    y0 = height - _LEGEND_H + 4
    bar_x0 = _PAD + _text_width(low, _LABEL_SCALE) + _PAD
    bar_x1 = width - _PAD - _text_width(high, _LABEL_SCALE) - _PAD
    if bar_x1 > bar_x0:
        ramp = np.tile(np.linspace(0.0, 1.0, bar_x1 - bar_x0), (12, 1))
        canvas[y0:y0 + 12, bar_x0:bar_x1] = colorize(ramp, cmap)
    cv2.putText(canvas, low, (_PAD, y0 + 11), fontScale=_LABEL_SCALE, **text_style)
    cv2.putText(canvas, high, (bar_x1 + _PAD, y0 + 11), fontScale=_LABEL_SCALE,
                **text_style)
    return canvas


def save_attention_pictures(out_dir: Union[str, Path], image: np.ndarray,
                            level: LevelMaps, *, name: str = '', alpha: float = 0.5,
                            cmap: str = 'jet', scale: str = 'linear', tile_size: int = 256,
                            save_npy: bool = False) -> List[Path]:
    """Write the pictures (and optionally arrays) of one level of one image.

    Files, with ``<level>`` = ``level.label`` (e.g. ``level0``, ``vt_module1``):

    * ``<level>_token<k>.png``: token k's spatial attention ``A`` over the image;
    * ``<level>_grid.png``: all tokens of the level, labelled, with a colour bar;
    * ``<level>_mixed_token<k>.png``, ``<level>_mixed_grid.png``: the same for the
      transformer-mixed attention ``Â`` (only when the level has a transformer);
    * with ``save_npy``: ``<level>_attn.npy`` (L, h, w) the raw ``A`` as captured,
      ``<level>_mixing.npy`` (L, N) the head-averaged token self-attention rows and
      ``<level>_mixed.npy`` (L, H, W) ``Â`` at image resolution (float32).

    Args:
        out_dir: folder to write to (created if needed).
        image: (H, W, 3) uint8 BGR original image.
        level: the level's maps from :func:`vtseg.analysis.attention.image_attention`.
        name: image name used in the grid titles.
        alpha, cmap, scale, tile_size: see :func:`overlay` and :func:`attention_grid`.
        save_npy: also write the arrays.

    Returns:
        The paths written, in the order above.
    """
    out_dir = Path(out_dir)
    written: List[Path] = []

    def write(path: Path, picture: np.ndarray) -> None:
        if not mmcv.imwrite(picture, str(path)):
            raise OSError(f'could not write {path}')
        written.append(path)

    lab = level.label
    h, w = level.raw.shape[-2:]
    big_h, big_w = level.image.shape[-2:]
    # Entropy of A on its own h x w map (the paper's number); Â exists only at image
    # resolution, so its entropy is over the H x W image pixels. Each title gives the
    # uniform baseline of the same resolution.
    kinds = [('', level.image, 'spatial attention A',
              attention_entropy(level.raw), uniform_entropy(h, w), f'{h}x{w}')]
    if level.mixed is not None:
        kinds.append(('_mixed', level.mixed, 'transformer-mixed attention WA',
                      attention_entropy(level.mixed), uniform_entropy(big_h, big_w),
                      f'{big_h}x{big_w}'))
    for suffix, maps, what, entropy, uniform, res in kinds:
        for k, m in enumerate(maps):
            write(out_dir / f'{lab}{suffix}_token{k}.png', overlay(image, m, alpha, cmap, scale))
        labels = [f'token {k}  H={e:.2f}' for k, e in enumerate(entropy.tolist())]
        title = (f'{name} {lab}: {what}; H in nats over {res}, uniform '
                 f'{uniform:.2f}' + ('; log colours' if scale == 'log' else '')).strip()
        write(out_dir / f'{lab}{suffix}_grid.png',
              attention_grid(image, maps, labels, title, tile_size=tile_size, alpha=alpha,
                             cmap=cmap, scale=scale))
    if save_npy:
        arrays = [('attn', level.raw), ('mixing', level.mixing), ('mixed', level.mixed)]
        for key, value in arrays:
            if value is not None:
                path = out_dir / f'{lab}_{key}.npy'
                np.save(path, _as_float32(value))
                written.append(path)
    return written


def _as_float32(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy().astype(np.float32)
