"""Shared fixtures and helpers: a tiny VT-FPN demo run driven by mmseg's own tools (the
ones installed with mmsegmentation), vtseg's tools or a Runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
#: Test instrumentation that configs can import (slow_save.py).
HELPERS = REPO / 'tests' / 'checkpoint'
VTFPN = REPO / 'configs' / 'demo' / 'vtfpn_r18_vtdemo.py'
FPN = REPO / 'configs' / 'demo' / 'fpn_r18_vtdemo.py'
# One thread per process: the same reduction order in every run, light on shared CPUs.
# HELPERS is on the path for the slow_save module that test configs may import.
ENV = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE',
           PYTHONWARNINGS='ignore', PYTHONPATH=os.pathsep.join([str(REPO), str(HELPERS)]))


def mmseg_tool(name: str) -> str:
    """mmseg's own ``tools/<name>`` (``train.py``, ``test.py``) as installed with
    mmsegmentation (``mmseg/.mim/tools``), else the equivalent Runner script in
    ``tests/checkpoint/mmseg_<name>_cli.py`` (the mmsegmentation wheel ships none)."""
    import mmseg

    path = Path(mmseg.__file__).parent / '.mim' / 'tools' / name
    if path.is_file():
        return str(path)
    return str(HELPERS / f'mmseg_{Path(name).stem}_cli.py')


def tiny_options(data_root, iters: int = 4, ckpt_interval: int = 2) -> Dict[str, object]:
    """--cfg-options for a 48x48, width-8 VT-FPN demo run that trains in a second per
    iteration (validation at the end)."""
    opts: Dict[str, object] = {
        'model.backbone.stem_channels': 8, 'model.backbone.base_channels': 8,
        'model.neck.in_channels': [8, 16, 32, 64], 'model.neck.out_channels': 8,
        'model.neck.token_channels': 16, 'model.neck.num_heads': 2,
        'model.decode_head.in_channels': [8, 8, 8, 8], 'model.decode_head.channels': 8,
        'model.data_preprocessor.size': [48, 48],
        'train_dataloader.batch_size': 2,
        'train_cfg.max_iters': iters, 'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': ckpt_interval,
        'default_hooks.logger.interval': 1,
        'param_scheduler.0.end': 1, 'param_scheduler.1.begin': 1,
        'param_scheduler.1.end': iters,
    }
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts[f'{loader}.dataset.data_root'] = str(data_root)
        opts[f'{loader}.num_workers'] = 0
        opts[f'{loader}.persistent_workers'] = False
    return opts


def fpn_options(data_root) -> Dict[str, object]:
    """The same for the FPN demo config (no VT-FPN arguments)."""
    return {k: v for k, v in tiny_options(data_root).items()
            if k not in ('model.neck.token_channels', 'model.neck.num_heads')}


def as_cli(opts: Dict[str, object]) -> List[str]:
    return ['--cfg-options'] + [
        f"{k}=[{','.join(map(str, v))}]" if isinstance(v, list) else f'{k}={v}'
        for k, v in opts.items()]


def run(*args, expect_rc=0, timeout: int = 300, env=None) -> str:
    """Run ``python *args``; return stdout + stderr, checking the exit status."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if expect_rc is not None:
        assert proc.returncode == expect_rc, out[-5000:]
    return out


def state(path) -> dict:
    return torch.load(str(path), map_location='cpu')


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    from vtseg.datasets.demo import generate_demo_data

    root = tmp_path_factory.mktemp('vtdemo')
    generate_demo_data(root, num_train=8, num_val=2, seed=0, size=48, verbose=False)
    return root


@pytest.fixture(scope='session')
def fpn_checkpoint(demo_data, tmp_path_factory) -> str:
    """A checkpoint of the FPN demo model (another neck than VT-FPN's)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import vtseg  # noqa: F401

    init_default_scope('mmseg')
    cfg = Config.fromfile(str(FPN))
    cfg.merge_from_dict(fpn_options(demo_data))
    model = MODELS.build(cfg.model)
    path = tmp_path_factory.mktemp('fpn') / 'fpn_iter_8.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)
