"""mmseg 1.x's ``tools/train.py`` command line, for installs that do not ship it.

The mmsegmentation wheel installs no ``mmseg/.mim/tools/train.py``; this script does what
mmseg's does and nothing more: read the config (its ``custom_imports`` import vtseg),
merge ``--cfg-options``, choose the work dir (CLI, then the config, then
``./work_dirs/<config name>``), set ``resume``, build ``Runner.from_cfg`` (or the config's
``runner_type``) and train. It imports nothing from vtseg.
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner


def main() -> None:
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config')
    parser.add_argument('--work-dir')
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))

    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.resume = args.resume
    if 'runner_type' in cfg:
        from mmseg.registry import RUNNERS
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
