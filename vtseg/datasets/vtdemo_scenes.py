"""Scenes of the vtseg demo set: labels that local texture cannot decide.

The demo compares FPN and VT-FPN. If local texture alone decided the labels, both necks
would score the same; so the scenes are built around two kinds of non-local cue:

* **Cued objects** (classes ``cued_red`` and ``cued_blue``): one to three blobs (ellipses
  and rotated rectangles) painted with *one* striped texture. Which class they are is set by
  the colour of the single **beacon** (a small solid square, red or blue) placed somewhere
  else in the image, never touching them. Every pixel of a cued object, and every window
  around it, looks the same in both classes: only the beacon, often half an image away,
  tells them apart.
* **Discs** (classes ``disc_large`` and ``disc_small``): discs painted with *one*
  checkerboard texture whose class is set by their radius (large 13-17 px, small 5-8 px at
  96x96). Their inside looks the same in both classes: only the whole disc's extent tells
  them apart.

Textures are aligned to the image grid (stripes on ``x + y``, checks on ``x`` and ``y``),
so a window inside a ``cued_red`` blob has an identical twin inside some ``cued_blue``
blob. The background is a smooth random field of muted colours with pixel noise, far from
the beacon, stripe and checker colours. Shapes never overlap.

Scene ``i`` of a split depends only on ``(seed, split, i, size)``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import cv2
import numpy as np

__all__ = ['CLASSES', 'PALETTE', 'SPLITS', 'render_sample', 'BEACON_COLORS', 'STRIPE_COLORS',
           'CHECKER_COLORS', 'GENERATOR_VERSION']

#: Bumped whenever the rendering changes, so stale data on disk is regenerated.
GENERATOR_VERSION = 1

CLASSES = ('background', 'beacon', 'cued_red', 'cued_blue', 'disc_large', 'disc_small')
PALETTE = [[0, 0, 0], [255, 255, 255], [220, 20, 60], [0, 90, 230], [250, 170, 30],
           [110, 200, 90]]
BACKGROUND, BEACON, CUED_RED, CUED_BLUE, DISC_LARGE, DISC_SMALL = range(len(CLASSES))

# Colours are RGB. The beacon colour decides the class of the cued objects.
BEACON_COLORS = {CUED_RED: (225, 30, 30), CUED_BLUE: (30, 40, 225)}
STRIPE_COLORS = ((235, 205, 40), (35, 35, 35))   # cued objects, period 6 along x + y
CHECKER_COLORS = ((245, 245, 245), (40, 150, 70))  # discs, 3x3 pixel checks
STRIPE_PERIOD = 6
CHECKER_CELL = 3

SPLITS = {'train': 0, 'val': 1}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth muted colour field plus noise, (H, W, 3) uint8 RGB, channels in [45, 185]."""
    grey = rng.uniform(70, 150, size=(4, 4, 1))
    tint = rng.uniform(-18, 18, size=(4, 4, 3))
    field = cv2.resize((grey + tint).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, 6, size=field.shape).astype(np.float32)
    return np.clip(field, 45, 185).astype(np.uint8)


def _textures(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Grid-aligned stripe and checker images, (H, W, 3) uint8 RGB each."""
    yy, xx = np.mgrid[:size, :size]
    stripe_on = ((xx + yy) % STRIPE_PERIOD) < STRIPE_PERIOD // 2
    checker_on = ((xx // CHECKER_CELL + yy // CHECKER_CELL) % 2) == 0
    stripes = np.where(stripe_on[..., None], STRIPE_COLORS[0], STRIPE_COLORS[1])
    checks = np.where(checker_on[..., None], CHECKER_COLORS[0], CHECKER_COLORS[1])
    return stripes.astype(np.uint8), checks.astype(np.uint8)


def _blob_mask(rng: np.random.Generator, size: int, cx: int, cy: int,
               radius: int) -> np.ndarray:
    """An ellipse or rotated rectangle that fits in a circle of ``radius``, (H, W) bool."""
    mask = np.zeros((size, size), np.uint8)
    angle = float(rng.uniform(0, 180))
    a = radius
    b = int(round(radius * rng.uniform(0.45, 0.9)))
    if rng.random() < 0.5:
        cv2.ellipse(mask, (cx, cy), (a, b), angle, 0, 360, 1, thickness=-1,
                    lineType=cv2.LINE_8)
    else:
        # A rectangle with half-sides (a, b) scaled to fit the same circle.
        scale = radius / math.hypot(a, b)
        box = cv2.boxPoints(((cx, cy), (2 * a * scale, 2 * b * scale), angle))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _place(rng: np.random.Generator, size: int, radius: int,
           placed: List[Tuple[int, int, int]], margin: int = 3,
           tries: int = 200) -> Optional[Tuple[int, int]]:
    """A centre whose circle of ``radius`` stays inside the image and clear of ``placed``."""
    for _ in range(tries):
        cx = int(rng.integers(radius + 1, size - radius - 1))
        cy = int(rng.integers(radius + 1, size - radius - 1))
        if all(math.hypot(cx - x, cy - y) > radius + r + margin for x, y, r in placed):
            return cx, cy
    return None


def render_sample(seed: int, split: str, index: int,
                  size: int = 96) -> Tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        seed: dataset seed.
        split: ``'train'`` or ``'val'``.
        index: image index within the split.
        size: side of the square image in pixels.

    Returns:
        ``(image, label)``: (size, size, 3) uint8 RGB and (size, size) uint8 class indices.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {sorted(SPLITS)}, got {split!r}')
    rng = np.random.default_rng([seed, SPLITS[split], index, size])
    scale = size / 96
    image = _background(rng, size)
    label = np.zeros((size, size), np.uint8)
    stripes, checks = _textures(size)
    placed: List[Tuple[int, int, int]] = []

    # Discs first (the largest shapes), then the cued blobs, then the beacon.
    for _ in range(int(rng.integers(1, 3))):
        large = bool(rng.random() < 0.5)
        lo, hi = (13, 17) if large else (5, 8)
        radius = int(round(rng.integers(lo, hi + 1) * scale))
        centre = _place(rng, size, radius, placed)
        if centre is None:
            continue
        placed.append((*centre, radius))
        mask = np.zeros((size, size), np.uint8)
        cv2.circle(mask, centre, radius, 1, thickness=-1, lineType=cv2.LINE_8)
        mask = mask.astype(bool)
        image[mask] = checks[mask]
        label[mask] = DISC_LARGE if large else DISC_SMALL

    cue = CUED_RED if rng.random() < 0.5 else CUED_BLUE
    num_blobs = int(rng.integers(1, 4))
    for k in range(num_blobs):
        radius = int(round(rng.integers(7, 14) * scale))
        centre = _place(rng, size, radius, placed)
        if centre is None and k == 0:  # every scene has at least one cued object
            radius = int(round(6 * scale))
            centre = _place(rng, size, radius, placed, margin=2, tries=2000)
        if centre is None:
            continue
        placed.append((*centre, radius))
        mask = _blob_mask(rng, size, *centre, radius)
        image[mask] = stripes[mask]
        label[mask] = cue

    side = int(round(rng.integers(7, 11) * scale))
    half = side // 2
    # The circle around the square's corners keeps the beacon clear of every shape.
    centre = _place(rng, size, math.ceil(side / math.sqrt(2)), placed, margin=4, tries=5000)
    if centre is None:  # pragma: no cover - the scene always leaves room for a beacon
        raise RuntimeError(f'no room for the beacon in {split} image {index} (seed {seed})')
    x0, y0 = centre[0] - half, centre[1] - half
    image[y0:y0 + side, x0:x0 + side] = BEACON_COLORS[cue]
    label[y0:y0 + side, x0:x0 + side] = BEACON
    return image, label
