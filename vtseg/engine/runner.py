"""The logic behind ``tools/train.py`` and ``tools/test.py`` (mmseg 1.x's command line).

Each function edits an mmengine :class:`~mmengine.config.Config` the way mmseg 1.2.2's
tools do, plus what it takes to run the same command on a machine without CUDA:
``--amp`` becomes bfloat16 autocast, and ``--launcher pytorch|slurm|mpi`` runs gloo
processes (see :mod:`vtseg.engine.dist`).
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
from typing import Any, Dict, Optional

from mmengine.config import Config
from mmengine.device import is_cuda_available, is_mlu_available, is_npu_available
from mmengine.logging import print_log
from mmengine.runner import Runner

from ..cli.arguments import check_work_dir
from ..cli.cfg_options import merge_cfg_options, read_config
from .dist import setup_distributed

__all__ = ['load_config', 'prepare_train_cfg', 'prepare_test_cfg', 'enable_amp',
           'build_runner', 'read_test_metrics']

AMP_WRAPPERS = ('AmpOptimWrapper', 'BF16OptimWrapper')


def _gpu_amp_available() -> bool:
    """Whether mmengine's float16 ``AmpOptimWrapper`` can run here."""
    return is_cuda_available() or is_npu_available() or is_mlu_available()


def load_config(path: str, cfg_options: Optional[Dict[str, Any]] = None) -> Config:
    """Read a config file and merge ``--cfg-options`` into it (keys checked, see
    :func:`vtseg.cli.merge_cfg_options`)."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file {path!r} does not exist; pass the path of a '
                                'config, e.g. configs/demo/fpn_r18_vtdemo.py')
    cfg = read_config(path)  # errors name the file
    return merge_cfg_options(cfg, cfg_options)  # a mistyped key is an error, not a new key


def _set_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]) -> None:
    # As mmseg: --work-dir > work_dir in the file > ./work_dirs/<config name>.
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    check_work_dir(cfg.work_dir)  # a file there would fail in mmengine as "File exists"


def enable_amp(cfg: Config) -> Config:
    """Turn on mixed precision: float16 + dynamic loss scaling on GPUs (as mmseg),
    bfloat16 autocast (:class:`~vtseg.engine.BF16OptimWrapper`) on the CPU."""
    wrapper = cfg.optim_wrapper
    wrapper_type = wrapper.get('type', 'OptimWrapper')
    if wrapper_type in AMP_WRAPPERS:
        print_log(f'AMP training is already enabled in your config ({wrapper_type}).',
                  logger='current', level=logging.WARNING)
    elif wrapper_type != 'OptimWrapper':
        raise ValueError('--amp is only supported when optim_wrapper.type is OptimWrapper, '
                         f'got {wrapper_type!r}; set the mixed-precision wrapper in the '
                         'config instead')
    elif _gpu_amp_available():
        wrapper.type = 'AmpOptimWrapper'
        wrapper.loss_scale = 'dynamic'
    else:
        wrapper.type = 'BF16OptimWrapper'
        print_log('--amp without a GPU: training with bfloat16 autocast on the CPU',
                  logger='current')
    return _amp_on_this_device(cfg)


def _amp_on_this_device(cfg: Config) -> Config:
    """A config written for GPUs (``AmpOptimWrapper``) runs as bfloat16 on the CPU."""
    wrapper = cfg.get('optim_wrapper', None)
    if wrapper and wrapper.get('type') == 'AmpOptimWrapper' and not _gpu_amp_available():
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)
        wrapper.type = 'BF16OptimWrapper'
        print_log('AmpOptimWrapper needs a GPU; using BF16OptimWrapper (bfloat16 autocast) '
                  'on the CPU instead', logger='current', level=logging.WARNING)
    return cfg


def prepare_train_cfg(config: str, *, work_dir: Optional[str] = None, resume: bool = False,
                      amp: bool = False, cfg_options: Optional[Dict[str, Any]] = None,
                      launcher: str = 'none') -> Config:
    """The config ``tools/train.py`` runs, built as mmseg 1.2.2's ``train.py`` builds it.

    Args:
        config: config file.
        work_dir: where logs and checkpoints go (default ``./work_dirs/<config name>``).
        resume: resume from the latest checkpoint in ``work_dir`` (found automatically).
        amp: mixed precision (float16 on GPUs, bfloat16 on the CPU).
        cfg_options: ``--cfg-options`` overrides.
        launcher: ``none``, ``pytorch``, ``slurm`` or ``mpi``.
    """
    cfg = load_config(config, cfg_options)
    _set_work_dir(cfg, config, work_dir)
    if amp:
        enable_amp(cfg)
    else:
        _amp_on_this_device(cfg)
    cfg.resume = resume
    setup_distributed(cfg, launcher)
    return cfg


def prepare_test_cfg(config: str, checkpoint: str, *, work_dir: Optional[str] = None,
                     out: Optional[str] = None, show: bool = False,
                     show_dir: Optional[str] = None, wait_time: float = 2,
                     tta: bool = False, cfg_options: Optional[Dict[str, Any]] = None,
                     launcher: str = 'none') -> Config:
    """The config ``tools/test.py`` runs, built as mmseg 1.2.2's ``test.py`` builds it.

    Args:
        config, checkpoint: config file and the checkpoint to evaluate.
        work_dir: where the metrics JSON and logs go.
        out: folder for the predicted label maps (``IoUMetric(output_dir=...)``).
        show, show_dir, wait_time: draw predictions (on screen or into ``show_dir``).
        tta: test-time augmentation with the config's ``tta_pipeline`` and ``tta_model``.
        cfg_options, launcher: as for :func:`prepare_train_cfg`.
    """
    if not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint {checkpoint!r} does not exist; pass a .pth '
                                'file written by tools/train.py')
    cfg = load_config(config, cfg_options)
    _set_work_dir(cfg, config, work_dir)
    cfg.load_from = checkpoint
    if show or show_dir:
        hooks = cfg.get('default_hooks', {})
        if 'visualization' not in hooks:
            raise RuntimeError('--show/--show-dir need a VisualizationHook: add '
                               "default_hooks.visualization=dict(type='SegVisualizationHook')")
        vis = hooks['visualization']
        vis['draw'] = True
        if show:
            vis['show'] = True
            vis['wait_time'] = wait_time
        if show_dir:
            cfg.visualizer['save_dir'] = show_dir
    if tta:
        if not cfg.get('tta_pipeline') or not cfg.get('tta_model'):
            raise KeyError('--tta needs tta_pipeline and tta_model in the config (see '
                           "configs/demo/fpn_r18_vtdemo.py); add them or drop --tta")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if out is not None:
        cfg.test_evaluator['output_dir'] = out
        cfg.test_evaluator['keep_results'] = True
    setup_distributed(cfg, launcher)
    return cfg


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg``, or the registered ``runner_type`` if the config names one."""
    if 'runner_type' in cfg:
        from mmseg.registry import RUNNERS
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def read_test_metrics(work_dir: str) -> Dict[str, Any]:
    """Metrics of the latest ``tools/test.py`` run in ``work_dir``.

    mmengine's LoggerHook writes them to ``<work_dir>/<timestamp>/<timestamp>.json``.
    """
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, f'{d}.json'))) \
        if osp.isdir(work_dir) else []
    if not runs:
        raise FileNotFoundError(f'no <timestamp>/<timestamp>.json with test metrics in '
                                f'{work_dir!r}; run tools/test.py with --work-dir {work_dir}')
    with open(osp.join(work_dir, runs[-1], f'{runs[-1]}.json')) as f:
        return json.load(f)
