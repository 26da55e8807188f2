"""FPN vs VT-FPN, end to end on the CPU (``make demo``).

Generates the synthetic VTDemo set, trains configs/demo/fpn_r18_vtdemo.py and
configs/demo/vtfpn_r18_vtdemo.py with tools/train.py, evaluates both with tools/test.py and
prints one table: mIoU (and the IoU of the classes that need context), neck and total
MACs, parameters, forward time, and the all-background baseline. A second run reuses the
trained checkpoints when config, data and model code are unchanged. Examples::

    python tools/demo.py                     # about 15 minutes on 2 cores
    python tools/demo.py --iters 100         # a quick look (low mIoU)
    python tools/demo.py --retrain --work-dir work_dirs/demo2
"""
import argparse
import os
import sys
from pathlib import Path

# On a busy machine, OpenMP threads that spin while waiting for a descheduled sibling make
# training up to 10x slower; sleeping waiters cost little when the machine is idle.
# Set before torch starts its thread pool; the tools the demo runs inherit it.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import vtseg  # noqa: E402,F401
from vtseg.cli import ArgumentParser, positive_int, work_dir  # noqa: E402
from vtseg.demo import run_demo  # noqa: E402


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description='Train and compare FPN and VT-FPN on the '
                            'synthetic VTDemo set')
    parser.add_argument('--work-dir', default='work_dirs/demo', type=work_dir,
                        help='checkpoints, logs and metrics go to WORK_DIR/{fpn,vtfpn}')
    parser.add_argument('--data-root', default='data/vtdemo',
                        help='where the demo set is generated (skipped if complete)')
    parser.add_argument('--iters', type=positive_int, default=None,
                        help='training iterations per model (default: the configs\' 1000)')
    parser.add_argument('--num-train', type=positive_int, default=1000, help='training images')
    parser.add_argument('--num-val', type=positive_int, default=200, help='validation images')
    parser.add_argument('--seed', type=int, default=0, help='data set seed')
    parser.add_argument('--repeats', type=positive_int, default=30,
                        help='interleaved timing repeats per model (median reported)')
    parser.add_argument('--retrain', action='store_true',
                        help='train even if a checkpoint for the same config exists')
    return parser


def demo(args: argparse.Namespace) -> int:
    run_demo(work_dir=args.work_dir, data_root=args.data_root, num_train=args.num_train,
             num_val=args.num_val, seed=args.seed, iters=args.iters,
             repeats=args.repeats, retrain=args.retrain,
             root=str(Path(__file__).resolve().parents[1]))
    return 0


def main(argv=None) -> int:
    return build_parser().run(demo, argv)


if __name__ == '__main__':
    sys.exit(main())
