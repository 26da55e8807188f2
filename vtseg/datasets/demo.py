"""Generate the vtseg demo set (see :mod:`vtseg.datasets.vtdemo_scenes`) from a seed.

Layout, as mmseg's ``BaseSegDataset`` reads it (see :class:`~vtseg.datasets.VTDemoDataset`)::

    OUT/img_dir/{train,val}/000000.png   RGB images (saved as BGR PNG by OpenCV)
    OUT/ann_dir/{train,val}/000000.png   uint8 class indices, 0..5
    OUT/meta.json                        generation parameters (makes reruns a no-op)

Image ``i`` of a split depends only on ``(seed, split, i, size)``, so the first images of a
larger set are those of a smaller one, and the same seed gives byte-identical files.
Command line::

    python -m vtseg.datasets.demo --out data/vtdemo --num-train 1000 --num-val 200 --seed 0
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import cv2

from .vtdemo_scenes import CLASSES, GENERATOR_VERSION, PALETTE, render_sample

__all__ = ['DemoDataSpec', 'generate_demo_data', 'main']


@dataclass(frozen=True)
class DemoDataSpec:
    """Everything the generated files depend on (stored as ``meta.json``)."""

    num_train: int = 1000
    num_val: int = 200
    seed: int = 0
    size: int = 96
    version: int = GENERATOR_VERSION

    def check(self) -> None:
        for name in ('num_train', 'num_val'):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name} must be a positive integer, got {value!r}')
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f'seed must be a non-negative integer, got {self.seed!r}')
        if not isinstance(self.size, int) or self.size < 48:
            raise ValueError(f'size must be an integer >= 48 (pixels per side), got '
                             f'{self.size!r}')

    def counts(self) -> dict:
        return {'train': self.num_train, 'val': self.num_val}



def _read_meta(out: Path) -> Optional[dict]:
    try:
        return json.loads((out / 'meta.json').read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out: Path, spec: DemoDataSpec) -> bool:
    meta = _read_meta(out)
    if meta is None or meta.get('spec') != asdict(spec):
        return False
    for split, count in spec.counts().items():
        for sub in ('img_dir', 'ann_dir'):
            folder = out / sub / split
            if not folder.is_dir() or len(list(folder.glob('*.png'))) != count:
                return False
    return True


def generate_demo_data(out: str | os.PathLike, *, num_train: int = 1000,
                       num_val: int = 200, seed: int = 0, size: int = 96,
                       force: bool = False, verbose: bool = True) -> bool:
    """Write the demo set to ``out`` unless it is already there with the same parameters.

    The set is written to a sibling folder first and moved into place when complete, so an
    interrupted run never leaves a half-written set that looks complete.

    Args:
        out: destination folder (created).
        num_train, num_val: images per split.
        seed: dataset seed; the same seed gives byte-identical files.
        size: image side in pixels.
        force: regenerate even if a complete set with these parameters exists.
        verbose: print what happens.

    Returns:
        True if files were written, False if an identical set was already complete.
    """
    spec = DemoDataSpec(num_train=num_train, num_val=num_val, seed=seed, size=size)
    spec.check()
    out = Path(out)
    if not force and _is_complete(out, spec):
        if verbose:
            print(f'demo data: {out} is complete for {asdict(spec)}; nothing to do')
        return False
    if out.exists() and any(out.iterdir()) and _read_meta(out) is None:
        raise FileExistsError(
            f'{out} exists, is not empty and has no meta.json written by this generator; '
            'choose another --out or remove the folder')

    tmp = out.with_name(out.name + f'.partial-{os.getpid()}')
    shutil.rmtree(tmp, ignore_errors=True)
    for split, count in spec.counts().items():
        if verbose:
            print(f'demo data: writing {count} {split} images of {size}x{size} to {out}')
        img_dir = tmp / 'img_dir' / split
        ann_dir = tmp / 'ann_dir' / split
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for i in range(count):
            image, label = render_sample(seed, split, i, size)
            name = f'{i:06d}.png'
            # OpenCV writes BGR; mmseg's LoadImageFromFile reads BGR and the data
            # preprocessor converts to RGB (bgr_to_rgb=True).
            if not cv2.imwrite(str(img_dir / name), image[..., ::-1]) or \
                    not cv2.imwrite(str(ann_dir / name), label):
                raise OSError(f'could not write {img_dir / name}')
    meta = {'spec': asdict(spec), 'classes': list(CLASSES), 'palette': PALETTE}
    (tmp / 'meta.json').write_text(json.dumps(meta, indent=2) + '\n')
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return True


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Generate the vtseg demo segmentation set (deterministic from --seed).')
    parser.add_argument('--out', default='data/vtdemo', help='destination folder')
    parser.add_argument('--num-train', type=int, default=1000, help='training images')
    parser.add_argument('--num-val', type=int, default=200, help='validation images')
    parser.add_argument('--seed', type=int, default=0, help='dataset seed')
    parser.add_argument('--size', type=int, default=96, help='image side in pixels')
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if a complete set with these parameters exists')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        generate_demo_data(args.out, num_train=args.num_train, num_val=args.num_val,
                           seed=args.seed, size=args.size, force=args.force)
    except (ValueError, FileExistsError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
