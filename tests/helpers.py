"""Helpers shared by the tests (fixtures are in conftest.py): tiny VT-FPN demo runs driven
by mmseg's own tools, vtseg's tools or a Runner, and tiny LIP-layout runs."""
from __future__ import annotations

import os
import os.path as osp
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

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
    return {**opts, **data_options(data_root)}


def data_options(data_root) -> Dict[str, object]:
    """--cfg-options pointing every data loader of a demo config at ``data_root``, in the
    main process (no workers)."""
    opts: Dict[str, object] = {}
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


def _descendants(pid: int) -> List[int]:
    """Every live descendant of ``pid`` (from ``/proc``; empty where there is none)."""
    children: Dict[int, List[int]] = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_command(cmd: Sequence[str], *, timeout: float, cwd=REPO,
                env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` and return it completed, with stdout and stderr (as text).

    Unlike ``subprocess.run(timeout=)``, a command that overruns fails the test with its
    output so far instead of hanging it: the output goes to files, not pipes, which
    grandchildren (torchrun workers, data-loader workers) could hold open, and on timeout
    the command's whole process tree is killed, including workers in sessions of their own.
    """
    cmd = [str(c) for c in cmd]
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or ENV, stdout=out, stderr=err,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for pid in [proc.pid, *_descendants(proc.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out:
        pytest.fail(f'{" ".join(cmd)} did not finish within {timeout:.0f} s and was killed '
                    f'with its child processes. Its output:\n{(stdout + stderr)[-5000:]}')
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def run(*args, expect_rc=0, timeout: int = 300, env=None) -> str:
    """Run ``python *args``; return stdout + stderr, checking the exit status."""
    proc = run_command([sys.executable, *args], timeout=timeout, env=env)
    out = proc.stdout + proc.stderr
    if expect_rc is not None:
        assert proc.returncode == expect_rc, out[-5000:]
    return out


def state(path) -> dict:
    return torch.load(str(path), map_location='cpu')


NECK = dict(type='VTFPN', in_channels=[8, 16, 32, 64], out_channels=16, num_outs=4,
            num_tokens=4, token_channels=32, num_heads=4)


# --------------------------------------------------------------------------- helpers
def make_lip(root: str, n: int = 6, size=(32, 32), split: str = 'train') -> str:
    """A LIP-layout folder of ``n`` random JPEG images and 4-class PNG label maps."""
    rng = np.random.default_rng(0)
    os.makedirs(osp.join(root, f'{split}_images'), exist_ok=True)
    os.makedirs(osp.join(root, f'{split}_segmentations'), exist_ok=True)
    for i in range(n):
        img = (rng.random((*size, 3)) * 255).astype(np.uint8)
        seg = np.zeros(size, np.uint8)
        seg[size[0] // 2:, :] = 1 + i % 3  # lower half: one of classes 1..3
        cv2.imwrite(osp.join(root, f'{split}_images', f'{i:03d}.jpg'), img)
        cv2.imwrite(osp.join(root, f'{split}_segmentations', f'{i:03d}.png'), seg)
    return root


def model_cfg(num_classes: int = 4, neck: dict = NECK, dropout: float = 0.1) -> dict:
    """EncoderDecoder: tiny ResNetV1c-18 (8..64 channels) + VTFPN + FPNHead."""
    norm_cfg = dict(type='BN', requires_grad=True)
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[128.] * 3, std=[64.] * 3,
                               bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(32, 32)),
        backbone=dict(type='ResNetV1c', depth=18, stem_channels=8, base_channels=8,
                      out_indices=(0, 1, 2, 3), norm_cfg=norm_cfg, init_cfg=None),
        neck=neck,
        decode_head=dict(type='FPNHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                         feature_strides=[4, 8, 16, 32], channels=8, dropout_ratio=dropout,
                         num_classes=num_classes, norm_cfg=norm_cfg, align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


def train_cfg(data_root: str, work_dir: str, *, max_iters: int, interval: int = 2,
              num_classes: int = 4, schedule: int = 6, **extra) -> Config:
    """A tiny LIP-layout training run on the CPU (seeded, no workers, no validation).

    The learning rate decays over ``schedule`` iterations whatever ``max_iters`` is, so a
    run stopped at ``max_iters=4`` is the first part of a 6-iteration run.
    """
    pipeline = [dict(type='CheckedLoadImageFromFile'),
                dict(type='CheckedLoadAnnotations', num_classes=num_classes),
                dict(type='RandomFlip', prob=0.5), dict(type='PackSegInputs')]
    cfg = dict(
        default_scope='mmseg', work_dir=work_dir, model=model_cfg(num_classes),
        experiment_name=f'{osp.basename(work_dir)}_{max_iters}_{os.urandom(3).hex()}',
        train_dataloader=dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            sampler=dict(type='InfiniteSampler', shuffle=True),
            dataset=dict(type='LIPDataset', data_root=data_root,
                         data_prefix=dict(img_path='train_images',
                                          seg_map_path='train_segmentations'),
                         pipeline=pipeline)),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10 ** 6),
        optim_wrapper=dict(type='OptimWrapper',
                           optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        param_scheduler=[dict(type='PolyLR', power=0.9, begin=0, end=schedule,
                              by_epoch=False)],
        default_hooks=dict(
            timer=dict(type='IterTimerHook'),
            logger=dict(type='LoggerHook', interval=1),
            param_scheduler=dict(type='ParamSchedulerHook'),
            checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=interval),
            checkpoint_report=dict(type='CheckpointReportHook')),
        env_cfg=dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo')),
        randomness=dict(seed=0), log_level='WARNING', resume=False, load_from=None)
    cfg.update(extra)
    return Config(cfg)
