"""What mmseg 1.x's ``tools/train.py`` and ``tools/test.py`` share: read the config (its
``custom_imports`` import vtseg), merge ``--cfg-options``, choose the work dir (CLI, then
the config, then ``./work_dirs/<config name>``) and build ``Runner.from_cfg`` (or the
config's ``runner_type``). For installs that do not ship mmseg's scripts (the
mmsegmentation wheel ships none); it imports nothing from vtseg."""
import argparse
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.runner import Runner


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument('config')
    p.add_argument('--work-dir')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    return p


def build_runner(args: argparse.Namespace, **settings) -> Runner:
    """The Runner of ``args.config`` with ``settings`` (``resume``, ``load_from``) set."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    for key, value in settings.items():
        cfg[key] = value
    if 'runner_type' in cfg:
        from mmseg.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)
