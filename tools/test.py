"""Test (and evaluate) a segmentor: mmseg 1.x's ``tools/test.py`` command line.

Prints aAcc, mIoU and mAcc, and the per-class IoU/Acc table of mmseg's ``IoUMetric``;
the metrics are also written to ``<work_dir>/<timestamp>/<timestamp>.json``. Examples::

    python tools/test.py CONFIG CHECKPOINT
    python tools/test.py CONFIG CHECKPOINT --show-dir vis --cfg-options \
        default_hooks.visualization.interval=1      # paint every image, not every 50th
    bash tools/dist_test.sh CONFIG CHECKPOINT 8
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import vtseg  # noqa: F401  (registers vtseg; checkpoints load under torch>=2.6)
from vtseg.checkpoint import check_checkpoint_file
from vtseg.cli import ArgumentParser, CfgOptionsAction, config_file, work_dir
from vtseg.datasets import check_data_cfg
from vtseg.engine import build_runner, prepare_test_cfg
from vtseg.engine.dist import LAUNCHERS, finish_distributed


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description='MMSeg test (and eval) a model')
    parser.add_argument('config', type=config_file, help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', type=work_dir,
        help='if specified, the evaluation metric results will be dumped into the '
        'directory as json')
    parser.add_argument(
        '--out', type=str,
        help='the directory to save output prediction for offline evaluation')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved. If specified, it will be '
        'automatically saved to the work_dir/timestamp/show_dir')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy '
        'format will be merged into config file. If the value to be overwritten is a '
        'list, it should be like key="[a,b]" or key=a,b. It also allows nested '
        'list/tuple values, e.g. key="[(a,b),(c,d)]". Note that the quotation marks are '
        'necessary and that no white space is allowed.')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--tta', action='store_true', help='Test time augmentation')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def test(args: argparse.Namespace) -> int:
    """Everything after parsing; any error becomes one ``error:`` line (vtseg.cli)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = prepare_test_cfg(args.config, args.checkpoint, work_dir=args.work_dir,
                           out=args.out, show=args.show, show_dir=args.show_dir,
                           wait_time=args.wait_time, tta=args.tta,
                           cfg_options=args.cfg_options, launcher=args.launcher)
    check_checkpoint_file(args.checkpoint)  # truncated or corrupt: name the file
    check_data_cfg(cfg, splits=('test',))
    runner = build_runner(cfg)
    # The config's CheckpointReportHook refuses a checkpoint that does not fit.
    runner.test()  # a bad test sample raises BadSampleError naming the file: no metric
    finish_distributed()  # gloo runs: let every rank finish, then leave
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return build_parser().run(test, argv)


if __name__ == '__main__':
    sys.exit(main())
