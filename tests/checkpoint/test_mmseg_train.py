"""mmseg's own tools/train.py and tools/test.py with a vtseg config get vtseg's checkpoint
safety from the config alone: exact resume after SIGKILL, resume past a truncated newest
checkpoint, refusal of another model's checkpoint, a kill during a save with
``max_keep_ckpts=1``. Nothing of vtseg's tools is involved."""
from __future__ import annotations

import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import ENV, VTFPN, as_cli, mmseg_tool, run, state, tiny_options

from vtseg.checkpoint import check_checkpoint_file

ITERS, INTERVAL = 8, 2


def _train(work_dir, data, *extra, iters=ITERS, options=(), expect_rc=0, env=None,
           config=VTFPN) -> str:
    opts = {**tiny_options(data, iters=iters, ckpt_interval=INTERVAL), **dict(options)}
    return run(mmseg_tool('train.py'), config, '--work-dir', work_dir, *extra, *as_cli(opts),
               expect_rc=expect_rc, env=env)


def _popen(work_dir, data, *, options=(), env=None, config=VTFPN) -> subprocess.Popen:
    cmd = [sys.executable, mmseg_tool('train.py'), str(config), '--work-dir', str(work_dir),
           *as_cli({**tiny_options(data, iters=ITERS, ckpt_interval=INTERVAL), **dict(options)})]
    return subprocess.Popen(cmd, env=env or ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_for(predicate, proc, timeout=240) -> None:
    deadline = time.time() + timeout
    while not predicate() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)


def _kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, 'the run ended before it was killed'


def _assert_same_run(a_path, b_path) -> None:
    a, b = state(a_path), state(b_path)
    assert a['meta']['iter'] == b['meta']['iter'] == ITERS
    for key, value in a['state_dict'].items():  # weights and BN statistics
        assert torch.equal(value, b['state_dict'][key]), key
    moments = [(sa[name], b['optimizer']['state'][i][name])
               for i, sa in a['optimizer']['state'].items() for name in sa
               if isinstance(sa[name], torch.Tensor)]
    assert moments and all(torch.equal(x, y) for x, y in moments)


@pytest.fixture(scope='module')
def full_run(demo_data, tmp_path_factory):
    """An uninterrupted 8-iteration run of mmseg's train.py (checkpoints every 2)."""
    work = tmp_path_factory.mktemp('full')
    _train(work, demo_data)
    return work


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(full_run, demo_data, tmp_path):
    killed = tmp_path / 'killed'
    proc = _popen(killed, demo_data)
    _wait_for(lambda: (killed / 'last_checkpoint').is_file(), proc)
    _kill(proc)
    saved = sorted(f for f in os.listdir(killed) if f.endswith('.pth'))
    assert saved and f'iter_{ITERS}.pth' not in saved, saved  # killed mid-run
    out = _train(killed, demo_data, '--resume')
    assert 'resumed epoch: 0, iter:' in out
    assert 'HostMemoryHook: freed host memory is kept for reuse' in out  # from the config
    # Bitwise: data order, LR schedule, AdamW moments and dropout masks (RNG state).
    _assert_same_run(full_run / f'iter_{ITERS}.pth', killed / f'iter_{ITERS}.pth')


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint_naming_it(full_run, demo_data, tmp_path):
    work = tmp_path / 'work'
    shutil.copytree(full_run, work, ignore=shutil.ignore_patterns('2*'))
    # The demo keeps 2 checkpoints: iter_6 and iter_8. Cut the newest in half.
    newest = work / f'iter_{ITERS}.pth'
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])
    (work / 'last_checkpoint').write_text(str(newest))
    out = _train(work, demo_data, '--resume', iters=ITERS + 2)
    assert f'Not resuming from {newest}' in out and 'truncated' in out
    assert f'Resuming from {work / f"iter_{ITERS - 2}.pth"}' in out
    assert f'resumed epoch: 0, iter: {ITERS - 2}' in out
    assert state(work / f'iter_{ITERS + 2}.pth')['meta']['iter'] == ITERS + 2


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_by_train_and_test(fpn_checkpoint, demo_data,
                                                                  tmp_path):
    out = _train(tmp_path / 'ft', demo_data, options={'load_from': fpn_checkpoint},
                 expect_rc=1)
    assert 'CheckpointMismatchError' in out and f'Checkpoint {fpn_checkpoint}' in out
    assert 'model tensors missing from the checkpoint' in out
    assert 'neck.tokenizers.0.token_filters' in out  # the VT-FPN tensors it lacks
    assert 'default_hooks.checkpoint_report.allow_missing=True' in out  # how to allow it
    assert 'Iter(train)' not in out  # refused before the first iteration

    test = mmseg_tool('test.py')
    opts = as_cli(tiny_options(demo_data))
    out = run(test, VTFPN, fpn_checkpoint, '--work-dir', tmp_path / 't1', *opts,
              expect_rc=1)
    assert 'CheckpointMismatchError' in out and 'neck.tokenizers.0.token_filters' in out
    assert 'Iter(test)' not in out  # no metric of a half-random model
    # Asked for explicitly, the partial load runs (and says what stays random).
    out = run(test, VTFPN, fpn_checkpoint, '--work-dir', tmp_path / 't2', *opts,
              'default_hooks.checkpoint_report.allow_missing=True')
    assert 'model tensors missing from the checkpoint' in out
    assert re.search(r'Iter\(test\) \[2/2\]\s+aAcc: [\d.]+\s+mIoU: [\d.]+', out), out[-3000:]


@pytest.mark.slow
def test_kill_during_save_with_max_keep_ckpts_1_leaves_a_loadable_checkpoint(
        full_run, demo_data, tmp_path):
    work = tmp_path / 'work'
    mark = tmp_path / 'saving'
    env = dict(ENV, VTSEG_TEST_SLOW_SAVE='iter_4.pth', VTSEG_TEST_SLOW_SAVE_MARK=str(mark))
    config = tmp_path / 'cfg.py'  # the demo config plus the instrumented fsync
    config.write_text(f'_base_ = [{str(VTFPN)!r}]\n'
                      "custom_imports = dict(imports=['vtseg', 'slow_save'])\n")
    keep1 = {'default_hooks.checkpoint.max_keep_ckpts': 1}
    proc = _popen(work, demo_data, options=keep1, env=env, config=config)
    _wait_for(mark.is_file, proc)
    assert mark.is_file(), 'the save of iter_4.pth was not reached'
    _kill(proc)  # iter_4.pth is written to its temporary file, not yet renamed
    files = sorted(os.listdir(work))
    tmp = [f for f in files if f.startswith('.iter_4.pth.') and f.endswith('.tmp')]
    assert [f for f in files if f.endswith('.pth')] == ['iter_2.pth'] and len(tmp) == 1
    check_checkpoint_file(str(work / 'iter_2.pth'))
    assert state(work / 'iter_2.pth')['meta']['iter'] == 2  # loadable
    assert (work / 'last_checkpoint').read_text() == str(work / 'iter_2.pth')

    out = _train(work, demo_data, '--resume', options=keep1, config=config)
    assert f'Removed {work / tmp[0]}' in out and 'interrupted' in out
    assert 'resumed epoch: 0, iter: 2' in out
    assert not [f for f in os.listdir(work) if f.endswith('.tmp')]
    assert sorted(f for f in os.listdir(work) if f.endswith('.pth')) == [f'iter_{ITERS}.pth']
    _assert_same_run(full_run / f'iter_{ITERS}.pth', work / f'iter_{ITERS}.pth')
    assert osp.isfile(work / 'last_checkpoint')
