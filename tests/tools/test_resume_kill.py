"""Training killed with SIGKILL, then resumed, ends with the weights of an uninterrupted run.

Three runs of ``tools/train.py`` with a tiny VT-FPN model on a generated LIP-layout set:
an uninterrupted one; one killed with SIGKILL as soon as a checkpoint is on disk; and the
killed one restarted with ``--resume``. With a fixed seed on the CPU the final weights, BN
statistics and optimizer state are bitwise equal: the data order is replayed by mmengine,
the learning-rate schedule and momentum come from the checkpoint, and the dropout masks
match because :class:`~vtseg.checkpoint.SafeCheckpointHook` resumes the torch
random number generator too.
"""
from __future__ import annotations

import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import make_lip, train_cfg

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
MAX_ITERS, INTERVAL = 16, 4

TRAIN = osp.join(REPO, 'tools', 'train.py')


def _command(tmp_path, work_dir: str, *resume: str) -> list:
    return [sys.executable, TRAIN, str(tmp_path / 'cfg.py'), '--work-dir', work_dir, *resume]


def _env() -> dict:
    # One thread in every run: the same reduction order, and a light load on shared CPUs.
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=REPO)


def _last_checkpoint(work_dir: str) -> str:
    try:
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ''


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    data = make_lip(str(tmp_path / 'LIP'), n=8)
    cfg = train_cfg(data, 'unused', max_iters=MAX_ITERS, interval=INTERVAL,
                    schedule=MAX_ITERS)
    cfg.pop('experiment_name')
    cfg.custom_hooks = [dict(type='WorkDirLockHook')]  # as configs/_base_/default_runtime.py
    cfg.dump(str(tmp_path / 'cfg.py'))
    full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')

    subprocess.run(_command(tmp_path, full), env=_env(), cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)

    proc = subprocess.Popen(_command(tmp_path, killed), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not _last_checkpoint(killed) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, 'the run ended before it was killed'
    saved = sorted(f for f in os.listdir(killed) if f.endswith('.pth'))
    assert saved and f'iter_{MAX_ITERS}.pth' not in saved, saved  # killed mid-run
    assert osp.exists(osp.join(killed, '.vtseg_train.lock'))  # left behind by the kill

    resumed = subprocess.run(_command(tmp_path, killed, '--resume'), env=_env(), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]  # stale lock taken over
    assert not osp.exists(osp.join(killed, '.vtseg_train.lock'))

    a = torch.load(osp.join(full, f'iter_{MAX_ITERS}.pth'), map_location='cpu')
    b = torch.load(osp.join(killed, f'iter_{MAX_ITERS}.pth'), map_location='cpu')
    assert a['meta']['iter'] == b['meta']['iter'] == MAX_ITERS
    for key, value in a['state_dict'].items():  # weights and BN statistics
        assert torch.equal(value, b['state_dict'][key]), key
    momenta = [(s['momentum_buffer'], b['optimizer']['state'][i]['momentum_buffer'])
               for i, s in a['optimizer']['state'].items()]
    assert momenta and all(torch.equal(x, y) for x, y in momenta)
