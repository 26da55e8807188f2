"""Count multiply-accumulates (FLOPs) and parameters of a config's model, by part.

    python tools/get_flops.py configs/vtfpn_r50_lip.py
    python tools/get_flops.py configs/fpn_r50_coco-stuff164k.py --shape 800 1216
    python tools/get_flops.py --paper-tables          # the paper's Tables 9 and 10
    python tools/get_flops.py --table8                # the paper's Table 8 (VT-ResNets)

Pretrained weights are never loaded (nothing is downloaded; FLOPs do not depend on them).
The logic lives in :mod:`vtseg.analysis`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from vtseg.analysis.config_model import build_model_from_config, load_config
from vtseg.analysis.flops import format_complexity, model_complexity
from vtseg.analysis.paper_tables import (
    PAPER_TABLES_9_10,
    format_paper_tables,
    measure_paper_tables,
)
from vtseg.analysis.table8 import format_table8, table8_rows
from vtseg.cli import (
    ArgumentParser,
    CfgOptionsAction,
    CLIError,
    config_file,
    device,
    positive_int,
)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', type=config_file, help='config file')
    parser.add_argument('--shape', type=positive_int, nargs=2, metavar=('H', 'W'),
                        help='input size (default: the paper size for the paper configs, '
                        'else the config\'s crop_size)')
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default={},
                        help='override config entries, e.g. model.neck.num_tokens=16')
    parser.add_argument('--paper-tables', action='store_true',
                        help='build the eight models of Tables 9 and 10 and print the '
                        'paper\'s FLOPs next to ours')
    parser.add_argument('--table8', action='store_true',
                        help='build the ImageNet classifiers of Table 8 (VT-ResNets and '
                        'ResNets, 224x224) and print the paper\'s MACs and parameters next '
                        'to ours')
    parser.add_argument('--config-dir',
                        default=os.path.relpath(Path(__file__).resolve().parents[1] / 'configs'),
                        help='where --paper-tables finds the configs (default: %(default)s)')
    parser.add_argument('--device', default='cpu', type=device,
                        help='device of the counting pass')
    return parser


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.config) + args.paper_tables + args.table8 != 1:
        parser.error('give either a CONFIG or --paper-tables or --table8 (exactly one)')
    return args


def default_shape(config: str, cfg) -> Tuple[int, int]:
    """The paper's input size for a paper config, else ``crop_size`` from the config."""
    for row in PAPER_TABLES_9_10:
        if Path(config).name == row.config_name:
            return row.input_shape
    crop = cfg.get('crop_size')
    if crop is None:
        raise CLIError(f'{config} defines no crop_size: pass the input size with --shape H W')
    return int(crop[0]), int(crop[1])


def run(args: argparse.Namespace) -> None:
    if args.table8:
        print(format_table8(table8_rows()))
        return
    if args.paper_tables:
        results = measure_paper_tables(
            args.config_dir, device=args.device,
            progress=lambda msg: print(msg, file=sys.stderr, flush=True))
        print(format_paper_tables(results))
        return
    cfg = load_config(args.config, args.cfg_options)
    shape = tuple(args.shape) if args.shape else default_shape(args.config, cfg)
    model, _, switched_off = build_model_from_config(cfg, device=args.device)
    print(f'config {args.config}')
    if switched_off:
        print(f'pretrained weights not loaded: {", ".join(switched_off)}')
    print(format_complexity(model_complexity(model, shape)))


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return build_parser().run(lambda _: run(parse_args(argv)), argv)


if __name__ == '__main__':
    sys.exit(main())
