"""Draw the visual tokens' attention of a VT-FPN or VT-ResNet model (paper Figure 5).

Usage::

    python tools/visualize_attention.py CONFIG [CHECKPOINT] IMAGE_OR_FOLDER --out-dir DIR \
        [--device cpu] [--save-npy] [--alpha 0.5] [--scale linear|log] [--tile-size 256] \
        [--seed 0] [--cfg-options KEY=VALUE ...]

For every image it writes into ``DIR/<image_stem>/``, per VT level (``level{i}`` for the
pyramid levels of a VT-FPN neck, ``vt_module{i}`` for the VT modules of a VT-ResNet
backbone):

* ``<level>_token<k>.png``        spatial attention A of token k over the image
* ``<level>_grid.png``            all tokens of the level in one labelled picture
* ``<level>_mixed_token<k>.png``  transformer-mixed attention WA of token k
* ``<level>_mixed_grid.png``      all mixed maps of the level
* with ``--save-npy``: ``<level>_attn.npy`` (raw A, L x h x w), ``<level>_mixing.npy``
  (token self-attention rows, L x N), ``<level>_mixed.npy`` (WA at image size)

and ``DIR/entropy.json`` with the numbers of the printed entropy table. Colours: 'jet'
(red high, blue low), each map scaled on its own (min-max, or log with ``--scale log``).
See docs/attention.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Overlay the spatial attention of every visual token (and its '
                    'transformer-mixed version) on images, and print attention entropies.')
    parser.add_argument('config', help='model config file (VT-FPN or VT-ResNet)')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint file; without it the model has random weights')
    parser.add_argument('images', metavar='IMAGE_OR_FOLDER',
                        help='an image file or a folder of images (not searched recursively)')
    parser.add_argument('--out-dir', required=True, help='folder the pictures go to')
    parser.add_argument('--device', default='cpu', help="e.g. 'cpu' (default) or 'cuda:0'")
    parser.add_argument('--save-npy', action='store_true',
                        help='also save the raw attention maps as .npy files')
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='weight of the colours when blended with the image (0..1)')
    parser.add_argument('--scale', choices=('linear', 'log'), default='linear',
                        help="colour scale of each map: 'linear' min-max (default) or 'log' "
                             '(3 decades below the maximum; for very concentrated maps)')
    parser.add_argument('--tile-size', type=int, default=256,
                        help='longer side of each tile of the grid pictures, in pixels')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights when no checkpoint is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config settings, e.g. model.neck.num_tokens=8')
    args = parser.parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        parser.error(f'--alpha must lie in [0, 1], got {args.alpha}')
    if args.tile_size < 16:
        parser.error(f'--tile-size must be at least 16 pixels, got {args.tile_size}')
    return args


def find_images(path: str) -> List[Path]:
    """The image file ``path`` or the images directly inside folder ``path``."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        found = sorted(f for f in p.iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise SystemExit(f'error: IMAGE_OR_FOLDER {path} holds no image '
                             f'({", ".join(IMAGE_SUFFIXES)})')
        return found
    raise SystemExit(f'error: IMAGE_OR_FOLDER {path} does not exist')


def output_names(images: Sequence[Path]) -> List[str]:
    """One sub-folder name per image: its stem, or stem_ext where two stems clash."""
    stems = [p.stem for p in images]
    return [f'{p.stem}_{p.suffix[1:]}' if stems.count(p.stem) > 1 else p.stem
            for p in images]


def switch_off_pretrained(cfg) -> None:
    """Drop every pretrained-weights reference (``init_cfg`` of type Pretrained and
    ``pretrained=...``) from a model config, so that nothing is downloaded."""
    def is_pretrained(init_cfg) -> bool:
        items = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
        return any(isinstance(i, dict) and i.get('type') == 'Pretrained' for i in items)

    def visit(node) -> None:
        if isinstance(node, dict):
            if node.get('pretrained') is not None:
                node['pretrained'] = None
            if is_pretrained(node.get('init_cfg')):
                node['init_cfg'] = None
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(cfg)


def build_model(config: str, checkpoint: Optional[str], device: str, cfg_options: dict,
                seed: int):
    """The segmentor of ``config`` in eval mode, with ``checkpoint`` or random weights."""
    import torch
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    from vtseg.apis import init_model  # refuses checkpoints that do not fit the model
    from vtseg.checkpoint import CheckpointError, CheckpointMismatchError

    if not Path(config).is_file():
        raise SystemExit(f'error: CONFIG {config} does not exist')
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise SystemExit(f'error: CHECKPOINT {checkpoint} does not exist (leave it out to '
                         'run with random weights)')
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options)
    if 'model' not in cfg:
        raise SystemExit(f'error: CONFIG {config} defines no model')
    if checkpoint is None:
        print('WARNING: no CHECKPOINT given: the model has RANDOM weights (pretrained '
              'backbone weights switched off, nothing is downloaded). The pictures show an '
              "untrained model's attention, not what a trained VT model learns.",
              file=sys.stderr, flush=True)
        switch_off_pretrained(cfg.model)
        torch.manual_seed(seed)
    try:
        model = init_model(cfg, checkpoint, device=device)
    except (CheckpointError, CheckpointMismatchError) as err:
        raise SystemExit(f'error: {err}') from None
    if checkpoint is None:
        # The initialisation training starts from (e.g. VTFPN's Xavier lateral convs);
        # mmengine logs one line per parameter while doing it: keep the output readable.
        logger = MMLogger.get_current_instance()
        level = logger.level
        logger.setLevel(logging.WARNING)
        try:
            model.init_weights()
        finally:
            logger.setLevel(level)
        model.eval()
    return model


def entropy_rows(levels) -> List[dict]:
    """Per level: mean entropy over tokens of A (own map and image resolution) and of WA."""
    from vtseg.analysis.attention import attention_entropy, uniform_entropy

    rows = []
    for lv in levels:
        h, w = lv.raw.shape[-2:]
        big_h, big_w = lv.image.shape[-2:]
        rows.append(dict(
            level=lv.label, module=lv.level.tokenizer, tokens=lv.level.num_tokens,
            map=[h, w], entropy=attention_entropy(lv.raw).mean().item(),
            uniform=uniform_entropy(h, w),
            entropy_image=attention_entropy(lv.image).mean().item(),
            entropy_mixed_image=(attention_entropy(lv.mixed).mean().item()
                                 if lv.mixed is not None else None),
            uniform_image=uniform_entropy(big_h, big_w)))
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The entropy table (nats, mean over tokens) as printed."""
    lw = max([len('level')] + [len(r['level']) for r in rows]) + 2
    mw = max([len('module')] + [len(r['module']) for r in rows]) + 2
    head = (f'{"level":<{lw}}{"module":<{mw}}{"L":>3}{"map":>10}{"H(A)":>9}{"ln(hw)":>9}'
            f'{"H(A)img":>10}{"H(WA)img":>10}{"ln(HW)":>9}')
    lines = [head, '-' * len(head)]
    for r in rows:
        mixed = 'n/a' if r['entropy_mixed_image'] is None else \
            f'{r["entropy_mixed_image"]:.3f}'
        lines.append(
            f'{r["level"]:<{lw}}{r["module"]:<{mw}}{r["tokens"]:>3}'
            f'{"x".join(map(str, r["map"])):>10}{r["entropy"]:>9.3f}{r["uniform"]:>9.3f}'
            f'{r["entropy_image"]:>10.3f}{mixed:>10}{r["uniform_image"]:>9.3f}')
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    import mmcv

    import vtseg  # noqa: F401  (registers VTFPN / VTResNet; checkpoint loading on torch>=2.6)
    from vtseg.analysis.attention import find_vt_levels, image_attention
    from vtseg.visualization import save_attention_pictures

    images = find_images(args.images)
    model = build_model(args.config, args.checkpoint, args.device, args.cfg_options,
                        args.seed)
    try:
        find_vt_levels(model)
    except ValueError as err:
        raise SystemExit(f'error: {args.config}: {err}') from None

    out_dir = Path(args.out_dir)
    summary = {}
    for path, name in zip(images, output_names(images)):
        image = mmcv.imread(str(path))  # (H, W, 3) uint8 BGR
        if image is None:
            raise SystemExit(f'error: cannot read image {path}')
        levels = image_attention(model, image)
        image_dir = out_dir / name
        written = []
        for lv in levels:
            written += save_attention_pictures(
                image_dir, image, lv, name=path.name, alpha=args.alpha,
                scale=args.scale, tile_size=args.tile_size, save_npy=args.save_npy)
        rows = entropy_rows(levels)
        summary[str(path)] = dict(out_dir=str(image_dir), image_size=list(image.shape[:2]),
                                  levels=rows)
        print(f'\n{path} ({image.shape[0]}x{image.shape[1]}): {len(written)} files in '
              f'{image_dir}\nattention entropy in nats, mean over tokens; ln(hw) and ln(HW) '
              'are the uniform baselines of the level map and of the image')
        print(format_table(rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / 'entropy.json', 'w') as f:
        json.dump(summary, f, indent=2)
    if len(images) > 1:
        print(f'\nmean over {len(images)} images:')
        per_image = [s['levels'] for s in summary.values()]
        mean_rows = []
        for k, row in enumerate(per_image[0]):
            same = [levels[k] for levels in per_image]
            mean = dict(row)
            for key in ('entropy', 'uniform', 'entropy_image', 'uniform_image'):
                mean[key] = sum(r[key] for r in same) / len(same)
            mixed = [r['entropy_mixed_image'] for r in same]
            mean['entropy_mixed_image'] = (None if None in mixed
                                           else sum(mixed) / len(mixed))
            if len({tuple(r['map']) for r in same}) > 1:
                mean['map'] = ['varies']
            mean_rows.append(mean)
        print(format_table(mean_rows))
    print(f'\nwrote {out_dir / "entropy.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
