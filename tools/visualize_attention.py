"""Draw the visual tokens' attention of a VT-FPN or VT-ResNet model (paper Figure 5).

Usage::

    python tools/visualize_attention.py CONFIG [CHECKPOINT] IMAGE_OR_FOLDER... --out-dir DIR \
        [--checkpoint CKPT] [--device cpu] [--save-npy] [--alpha 0.5] [--scale linear|log] \
        [--tile-size 256] [--seed 0] [--cfg-options KEY=VALUE ...]

The first path after CONFIG is the checkpoint if its name ends in .pth/.pt/.ckpt/.bin/.pkl
or its bytes are a PyTorch file; every other path is an image or a folder of images.
``--checkpoint CKPT`` names it explicitly. Without a checkpoint the model has random
weights (a warning says so). An image that cannot be read is skipped with a warning; the
others are still drawn and ``entropy.json`` (rewritten after each image) keeps their
numbers; the exit status is then 1 and ``DIR/skipped.json`` lists what was skipped.

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
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from vtseg.cli import (
    EXIT_PARTIAL,
    ArgumentParser,
    CfgOptionsAction,
    CLIError,
    checkpoint_file,
    config_file,
    device,
    looks_like_checkpoint,
    positive_int,
    run_main,
)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
USAGE = ('%(prog)s CONFIG [CHECKPOINT] IMAGE_OR_FOLDER [IMAGE_OR_FOLDER ...] --out-dir DIR '
         '[options]')


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number') from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must lie in [0, 1], got {value}')
    return value


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        usage=USAGE,
        description='Overlay the spatial attention of every visual token (and its '
                    'transformer-mixed version) on images, and print attention entropies.')
    parser.add_argument('config', type=config_file,
                        help='model config file (VT-FPN or VT-ResNet)')
    parser.add_argument('paths', nargs='+', metavar='[CHECKPOINT] IMAGE_OR_FOLDER',
                        help='the checkpoint (if the first path ends in .pth/.pt/.ckpt/.bin/'
                             '.pkl or is a PyTorch file; without one the model has random '
                             'weights), then image files or folders of images (folders are '
                             'not searched recursively)')
    parser.add_argument('--checkpoint', type=checkpoint_file, default=None,
                        help='the checkpoint, named explicitly (then every path is an image)')
    parser.add_argument('--out-dir', required=True, help='folder the pictures go to')
    parser.add_argument('--device', default='cpu', type=device,
                        help="e.g. 'cpu' (default) or 'cuda:0'")
    parser.add_argument('--save-npy', action='store_true',
                        help='also save the raw attention maps as .npy files')
    parser.add_argument('--alpha', type=_unit_interval, default=0.5,
                        help='weight of the colours when blended with the image (0..1)')
    parser.add_argument('--scale', choices=('linear', 'log'), default='linear',
                        help="colour scale of each map: 'linear' min-max (default) or 'log' "
                             '(3 decades below the maximum; for very concentrated maps)')
    parser.add_argument('--tile-size', type=positive_int, default=256,
                        help='longer side of each tile of the grid pictures, in pixels '
                             '(at least 16)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random weights when no checkpoint is given')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default={},
                        help='override config settings, e.g. model.neck.num_tokens=8')
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and resolve which path is the checkpoint (``args.checkpoint``) and which are
    images (``args.images``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tile_size < 16:
        parser.error(f'argument --tile-size: must be at least 16 pixels, got {args.tile_size}')
    paths = list(args.paths)
    if args.checkpoint is None and looks_like_checkpoint(paths[0]):
        try:
            args.checkpoint = checkpoint_file(paths.pop(0))
        except argparse.ArgumentTypeError as err:
            parser.error(f'argument CHECKPOINT: {err} (leave it out to run with random '
                         'weights)')
    if not paths:
        parser.error(f'no IMAGE_OR_FOLDER after the checkpoint {args.checkpoint!r}')
    for path in paths:
        if looks_like_checkpoint(path) and Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            parser.error(f'{path!r} looks like a checkpoint, not an image; give one '
                         'checkpoint, first after CONFIG (or with --checkpoint)')
    args.images = paths
    return args


def find_images(paths: Sequence[str]) -> List[Path]:
    """The image files among ``paths`` and the images directly inside its folders."""
    found: List[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            inside = sorted(f for f in p.iterdir()
                            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise CLIError(f'IMAGE_OR_FOLDER {path} holds no image '
                               f'({", ".join(IMAGE_SUFFIXES)}; folders are not searched '
                               'recursively)')
            found += inside
        else:
            raise CLIError(f'IMAGE_OR_FOLDER {path} does not exist')
    return found


def output_names(images: Sequence[Path]) -> List[str]:
    """One sub-folder name per image: its stem, or stem_ext where two stems clash."""
    stems = [p.stem for p in images]
    return [f'{p.stem}_{p.suffix[1:]}' if stems.count(p.stem) > 1 else p.stem
            for p in images]


def build_model(config: str, checkpoint: Optional[str], device: str, cfg_options: dict,
                seed: int):
    """The segmentor of ``config`` in eval mode, with ``checkpoint`` or random weights."""
    import torch
    from mmengine.logging import MMLogger

    from vtseg.analysis.config_model import disable_pretrained
    from vtseg.apis import init_model  # refuses checkpoints that do not fit the model
    from vtseg.cli import merge_cfg_options, read_config

    cfg = merge_cfg_options(read_config(config), cfg_options)
    if 'model' not in cfg:
        raise CLIError(f'CONFIG {config} defines no model')
    if checkpoint is None:
        print('WARNING: no CHECKPOINT given: the model has RANDOM weights (pretrained '
              'backbone weights switched off, nothing is downloaded). The pictures show an '
              "untrained model's attention, not what a trained VT model learns.",
              file=sys.stderr, flush=True)
        disable_pretrained(cfg.model)
        torch.manual_seed(seed)
    # A checkpoint that does not fit raises CheckpointMismatchError: one error line.
    model = init_model(cfg, checkpoint, device=device)
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


def _write_json(path: Path, data) -> None:
    """Write ``data`` to ``path`` atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def _read_image(path: Path):
    """(H, W, 3) uint8 BGR, or raise ``ValueError`` saying why it cannot be used."""
    import mmcv

    try:
        image = mmcv.imread(str(path))
    except Exception as e:  # noqa: BLE001 - any decoder failure makes the image unusable
        raise ValueError(f'cannot read it ({e})') from e
    if image is None:
        raise ValueError('cannot decode it as an image (empty, truncated or not an image)')
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f'decoded to an array of shape {image.shape}')
    return image


def run(args: argparse.Namespace) -> int:
    """Draw every image; skip unreadable ones and keep the results of the others."""
    import vtseg  # noqa: F401  (registers VTFPN / VTResNet; checkpoint loading on torch>=2.6)
    from vtseg.analysis.attention import find_vt_levels, image_attention
    from vtseg.visualization import save_attention_pictures

    images = find_images(args.images)
    model = build_model(args.config, args.checkpoint, args.device, args.cfg_options,
                        args.seed)
    try:
        find_vt_levels(model)
    except ValueError as err:
        raise CLIError(f'{args.config}: {err}') from None

    out_dir = Path(args.out_dir)
    summary: Dict[str, dict] = {}
    skipped: Dict[str, str] = {}
    for path, name in zip(images, output_names(images)):
        try:
            image = _read_image(path)  # (H, W, 3) uint8 BGR
        except ValueError as err:
            skipped[str(path)] = str(err)
            print(f'warning: skipped {path}: {err}', file=sys.stderr, flush=True)
            continue
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
        _write_json(out_dir / 'entropy.json', summary)  # what is done stays done
        print(f'\n{path} ({image.shape[0]}x{image.shape[1]}): {len(written)} files in '
              f'{image_dir}\nattention entropy in nats, mean over tokens; ln(hw) and ln(HW) '
              'are the uniform baselines of the level map and of the image')
        print(format_table(rows))
    if skipped:
        _write_json(out_dir / 'skipped.json', skipped)
    if not summary:
        raise CLIError(f'none of the {len(images)} images could be read; see the warnings '
                       f'above (list in {out_dir / "skipped.json"})')
    if len(summary) > 1:
        print(f'\nmean over {len(summary)} images:')
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
    if skipped:
        listed = ', '.join(f'{p} ({why})' for p, why in list(skipped.items())[:5])
        more = f' and {len(skipped) - 5} more' if len(skipped) > 5 else ''
        print(f'error: {len(skipped)} of {len(images)} images could not be read and were '
              f'skipped: {listed}{more}; the other {len(summary)} are in '
              f'{out_dir / "entropy.json"}, the list in {out_dir / "skipped.json"}',
              file=sys.stderr, flush=True)
        return EXIT_PARTIAL
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: run(parse_args(argv)), debug='--debug' in argv)


if __name__ == '__main__':
    sys.exit(main())
