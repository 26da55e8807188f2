"""One training run per work dir (vtseg.engine.work_dir_lock): a second run refuses and
says why, a lock left by a killed run is taken over, whatever starts the Runner."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmseg.registry import DATASETS, MODELS
from torch.utils.data import Dataset

import vtseg  # noqa: F401  (registers WorkDirLockHook)
from vtseg.engine.work_dir_lock import (
    LOCK_NAME,
    WorkDirInUseError,
    _proc_stat,
    acquire_work_dir,
    read_lock,
    release_work_dir,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)

def _holder(work_dir: Path) -> subprocess.Popen:
    """A live process that holds the lock, as a training run started elsewhere would."""
    proc = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    os.makedirs(work_dir, exist_ok=True)
    (work_dir / LOCK_NAME).write_text(json.dumps(dict(
        pid=proc.pid, host=socket.gethostname(), proc_start=_proc_stat(proc.pid)[1],
        started='2026-01-01 00:00:00 UTC', command='python tools/train.py CONFIG')))
    return proc


@MODELS.register_module(name='_LockToyModel', force=True)
class _ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(1, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.w(inputs.float()[:, None])
        return dict(loss=(out ** 2).mean()) if mode == 'loss' else out


@DATASETS.register_module(name='_LockToyDataset', force=True)
class _ToyDataset(Dataset):
    metainfo: dict = {}

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return dict(inputs=float(i))


def _tiny_run_cfg(work_dir: Path) -> Config:
    """A 2-iteration training run of a 2-parameter model, with the lock hook."""
    return Config(dict(
        work_dir=str(work_dir), model=dict(type='_LockToyModel'),
        train_dataloader=dict(batch_size=2, num_workers=0,
                              sampler=dict(type='InfiniteSampler', shuffle=False),
                              dataset=dict(type='_LockToyDataset'),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1,
                                           by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='WorkDirLockHook')], default_scope='mmseg',
        log_level='WARNING', experiment_name=f'lock_{os.urandom(3).hex()}'))


def test_second_run_in_a_live_runs_work_dir_refuses_before_writing(tmp_path):
    work = tmp_path / 'work'
    holder = _holder(work)
    try:
        runner = Runner.from_cfg(_tiny_run_cfg(work))
        with pytest.raises(WorkDirInUseError) as err:
            runner.train()
        msg = str(err.value)
        assert f'pid {holder.pid}' in msg and 'in use by another training run' in msg
        assert '--work-dir' in msg and LOCK_NAME in msg
        assert not list(work.glob('*.pth')) and not (work / 'last_checkpoint').exists()
        assert read_lock(str(work))['pid'] == holder.pid  # the live run keeps its lock
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_run_is_taken_over_and_released_at_the_end(tmp_path, caplog):
    work = tmp_path / 'work'
    holder = _holder(work)
    holder.send_signal(signal.SIGKILL)  # no chance to clean up: the lock stays behind
    holder.wait()
    assert read_lock(str(work))['pid'] == holder.pid
    runner = Runner.from_cfg(_tiny_run_cfg(work))
    runner.train()
    assert (work / 'iter_2.pth').is_file()
    assert not (work / LOCK_NAME).exists()  # released in after_run


def test_zombie_and_recycled_pids_do_not_hold_a_lock(tmp_path):
    work = tmp_path / 'work'
    zombie = subprocess.Popen([sys.executable, '-c', 'pass'])
    time.sleep(0.5)  # exited, not yet reaped: kill(pid, 0) still succeeds
    os.makedirs(work)
    (work / LOCK_NAME).write_text(json.dumps(dict(pid=zombie.pid, host=os.uname().nodename,
                                                  proc_start=None)))
    messages = []
    acquire_work_dir(str(work), log=messages.append)
    assert 'no longer running' in messages[0]
    zombie.wait()
    # A live pid whose start time differs is another process that got the same number.
    (work / LOCK_NAME).write_text(json.dumps(dict(pid=os.getppid(), host=os.uname().nodename,
                                                  proc_start='1')))
    acquire_work_dir(str(work), log=messages.append)
    assert len(messages) == 2 and read_lock(str(work))['pid'] == os.getpid()
    assert release_work_dir(str(work)) and not (work / LOCK_NAME).exists()


def test_lock_from_another_host_is_respected(tmp_path):
    os.makedirs(tmp_path / 'w')
    (tmp_path / 'w' / LOCK_NAME).write_text(json.dumps(dict(pid=1, host='elsewhere')))
    with pytest.raises(WorkDirInUseError, match='on another host.*elsewhere.*delete'):
        acquire_work_dir(str(tmp_path / 'w'))


def test_tools_train_refuses_a_work_dir_in_use_with_one_error_line(tmp_path, capsys,
                                                                   monkeypatch):
    import importlib.util

    from vtseg.datasets.demo import generate_demo_data

    data = tmp_path / 'vtdemo'
    generate_demo_data(data, num_train=2, num_val=1, seed=0, size=48, verbose=False)
    spec = importlib.util.spec_from_file_location('train_tool', ROOT / 'tools' / 'train.py')
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    work = tmp_path / 'work'
    monkeypatch.setenv('LOCAL_RANK', '0')  # else the tool sets it for this process
    holder = _holder(work)
    try:
        code = train_tool.main(
            ['configs/demo/vtfpn_r18_vtdemo.py', '--work-dir', str(work), '--cfg-options',
             *[f'{s}_dataloader.{k}' for s in ('train', 'val', 'test')
               for k in (f'dataset.data_root={data}', 'num_workers=0',
                         'persistent_workers=False')]])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert code == 2 and len(errors) == 1 and 'Traceback' not in err, err[-3000:]
    assert f'in use by another training run: pid {holder.pid}' in errors[0]
    assert not list(work.glob('*.pth'))


def test_every_shipped_config_declares_the_lock():
    assert len(CONFIGS) >= 12  # paper and demo configs were found
    for config in CONFIGS:
        hooks = [h['type'] for h in Config.fromfile(str(ROOT / config)).get('custom_hooks')]
        assert 'WorkDirLockHook' in hooks, config
