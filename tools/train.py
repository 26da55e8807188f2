"""Train a segmentor: mmseg 1.x's ``tools/train.py`` command line, on GPUs or CPUs.

Examples::

    python tools/train.py configs/demo/vtfpn_r18_vtdemo.py
    python tools/train.py CONFIG --work-dir work_dirs/run1 --resume   # latest checkpoint
    python tools/train.py CONFIG --amp        # float16 on GPUs, bfloat16 on the CPU
    bash tools/dist_train.sh CONFIG 8         # torchrun; gloo processes without CUDA
"""
import argparse
import os
import sys
from typing import Optional, Sequence

import vtseg  # noqa: F401  (registers vtseg; checkpoints load under torch>=2.6)
from vtseg.cli import ArgumentParser, CfgOptionsAction, config_file, work_dir
from vtseg.datasets import check_data_cfg
from vtseg.engine import build_runner, prepare_train_cfg
from vtseg.engine.dist import LAUNCHERS, finish_distributed


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', type=config_file, help='train config file path')
    parser.add_argument('--work-dir', type=work_dir, help='the dir to save logs and models')
    parser.add_argument(
        '--resume', action='store_true', default=False,
        help='resume from the latest checkpoint in the work_dir automatically')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training (float16 on GPUs, bfloat16 '
        'autocast on the CPU)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=CfgOptionsAction,
        help='override some settings in the used config, the key-value pair in xxx=yyy '
        'format will be merged into config file. If the value to be overwritten is a '
        'list, it should be like key="[a,b]" or key=a,b. It also allows nested '
        'list/tuple values, e.g. key="[(a,b),(c,d)]". Note that the quotation marks are '
        'necessary and that no white space is allowed.')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank;
    # torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def train(args: argparse.Namespace) -> int:
    """Everything after parsing; any error becomes one ``error:`` line (vtseg.cli)."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = prepare_train_cfg(args.config, work_dir=args.work_dir, resume=args.resume,
                            amp=args.amp, cfg_options=args.cfg_options,
                            launcher=args.launcher)
    check_data_cfg(cfg)  # dataset folders exist and hold matching images and labels
    # The hooks the config declares (safe checkpoints, load report, model check, work-dir
    # lock) check their arguments when the Runner is built and before the first iteration.
    runner = build_runner(cfg)
    runner.train()
    finish_distributed()  # gloo runs: let every rank finish, then leave
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return build_parser().run(train, argv)


if __name__ == '__main__':
    sys.exit(main())
