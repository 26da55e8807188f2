"""tools/train.py and tools/test.py on the CPU: train, test, resume, mixed precision."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import as_cli, run, tiny_options

from vtseg.datasets.demo import generate_demo_data
from vtseg.datasets.vtdemo_scenes import CLASSES

ROOT = Path(__file__).resolve().parents[2]
VTFPN = 'configs/demo/vtfpn_r18_vtdemo.py'
# One thread per process, sleeping OpenMP waiters: fast and polite on a shared 2-core box.
ENV = dict(os.environ, OMP_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE',
           PYTHONWARNINGS='ignore')

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(),
                                    reason='tests the CPU code path')


def run_tool(*args, expect_rc=0, timeout=300):
    return run(*args, expect_rc=expect_rc, timeout=timeout, env=ENV)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('vtdemo')
    generate_demo_data(root, num_train=8, num_val=4, seed=0, size=48, verbose=False)
    return root


@pytest.fixture(scope='module')
def trained(data_root, tmp_path_factory):
    """A 4-iteration VT-FPN run with checkpoints at iterations 2 and 4."""
    work_dir = tmp_path_factory.mktemp('train')
    out = run_tool('tools/train.py', VTFPN, '--work-dir', work_dir,
                   *as_cli(tiny_options(data_root)))
    return work_dir, out


@pytest.mark.slow
def test_train_writes_checkpoints_and_validates(trained):
    work_dir, out = trained
    assert (work_dir / 'iter_2.pth').is_file() and (work_dir / 'iter_4.pth').is_file()
    assert 'Iter(train) [4/4]' in out
    assert 'HostMemoryHook: freed host memory is kept for reuse' in out
    assert re.search(r'Iter\(val\) \[4/4\]\s+aAcc: [\d.]+\s+mIoU: [\d.]+', out), out[-2000:]


@pytest.mark.slow
def test_test_prints_per_class_iou_and_writes_metrics(trained, data_root, tmp_path):
    from vtseg.engine import read_test_metrics

    work_dir, _ = trained
    out = run_tool('tools/test.py', VTFPN, work_dir / 'iter_4.pth', '--work-dir', tmp_path,
                   '--out', tmp_path / 'pred', *as_cli(tiny_options(data_root)))
    assert 'per class results' in out
    for name in CLASSES:  # one row per class in mmseg's table
        assert re.search(rf'\|\s+{name}\s+\|\s+[\d.]+\s+\|', out), name
    metrics = read_test_metrics(str(tmp_path))
    assert 0 <= metrics['mIoU'] <= 100
    assert {f'IoU.{c}' for c in CLASSES} <= set(metrics)
    assert len(list((tmp_path / 'pred').glob('*.png'))) == 4  # --out: one map per image


@pytest.mark.slow
def test_test_time_augmentation_runs(trained, data_root, tmp_path):
    work_dir, _ = trained
    out = run_tool('tools/test.py', VTFPN, work_dir / 'iter_4.pth', '--tta', '--work-dir',
                   tmp_path, *as_cli(tiny_options(data_root)))
    assert 'per class results' in out
    assert re.search(r'Iter\(test\) \[4/4\]\s+aAcc: [\d.]+\s+mIoU: [\d.]+', out), out[-2000:]


@pytest.mark.slow
def test_resume_continues_from_latest_checkpoint(trained, data_root, tmp_path):
    work_dir, _ = trained
    # An interrupted run: the iteration-4 checkpoint was never written.
    resumed = tmp_path / 'run'
    shutil.copytree(work_dir, resumed, ignore=shutil.ignore_patterns('iter_4.pth', '2*'))
    (resumed / 'last_checkpoint').write_text(str(resumed / 'iter_2.pth'))
    out = run_tool('tools/train.py', VTFPN, '--work-dir', resumed, '--resume',
                   *as_cli(tiny_options(data_root)))
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'Iter(train) [3/4]' in out and 'Iter(train) [1/4]' not in out
    ckpt = torch.load(resumed / 'iter_4.pth', map_location='cpu')
    assert ckpt['meta']['iter'] == 4


def test_missing_files_are_reported(tmp_path):
    out = run_tool('tools/train.py', tmp_path / 'nope.py', expect_rc=2)
    assert 'nope.py' in out and 'does not exist' in out
    out = run_tool('tools/test.py', VTFPN, tmp_path / 'nope.pth', expect_rc=2)
    assert 'nope.pth' in out and 'does not exist' in out


@needs_cpu_only
def test_launcher_without_torchrun_explains(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR')}
    proc = subprocess.run([sys.executable, 'tools/train.py', VTFPN, '--launcher', 'pytorch',
                           '--work-dir', str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'torchrun' in proc.stderr and 'RANK' in proc.stderr


def test_tta_needs_the_pipeline(tmp_path):
    from vtseg.engine import prepare_test_cfg

    ckpt = tmp_path / 'x.pth'
    ckpt.write_bytes(b'')
    cfg = prepare_test_cfg(VTFPN, str(ckpt), tta=True)
    assert cfg.model.type == 'SegTTAModel' and cfg.model.module.neck.type == 'VTFPN'
    with pytest.raises(KeyError, match='tta_pipeline'):
        prepare_test_cfg(VTFPN, str(ckpt), tta=True,
                         cfg_options={'tta_pipeline': None, 'tta_model': None})


@needs_cpu_only
def test_gpu_amp_config_runs_as_bfloat16_on_cpu():
    from vtseg.engine import prepare_train_cfg

    cfg = prepare_train_cfg(VTFPN, cfg_options={'optim_wrapper.type': 'AmpOptimWrapper',
                                                'optim_wrapper.loss_scale': 'dynamic'})
    assert cfg.optim_wrapper.type == 'BF16OptimWrapper'
    assert 'loss_scale' not in cfg.optim_wrapper
    with pytest.raises(ValueError, match='optim_wrapper.type'):
        prepare_train_cfg(VTFPN, amp=True,
                          cfg_options={'optim_wrapper.type': 'DeepSpeedOptimWrapper'})


@needs_cpu_only
@pytest.mark.slow
def test_amp_trains_under_bfloat16_autocast(data_root, tmp_path):
    """``--amp`` on the CPU: the forward pass really runs in bfloat16, weights stay fp32."""
    from vtseg.engine import build_runner, prepare_train_cfg

    cfg = prepare_train_cfg(VTFPN, work_dir=str(tmp_path), amp=True,
                            cfg_options=tiny_options(data_root, iters=2, ckpt_interval=2))
    assert cfg.optim_wrapper.type == 'BF16OptimWrapper'
    runner = build_runner(cfg)
    dtypes = []
    conv = runner.model.decode_head.conv_seg
    handle = conv.register_forward_hook(
        lambda m, i, o: dtypes.append(o.dtype) if m.training else None)
    try:
        runner.train()
    finally:
        handle.remove()
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert conv.weight.dtype == torch.float32
    assert (tmp_path / 'iter_2.pth').is_file()


@pytest.mark.slow
def test_demo_end_to_end_then_reuses_checkpoints(tmp_path, monkeypatch):
    from vtseg.demo import fpn_vs_vtfpn as demo

    data, work = tmp_path / 'data', tmp_path / 'work'
    out = run_tool('tools/demo.py', '--iters', 2, '--num-train', 8, '--num-val', 2,
                   '--repeats', 2, '--work-dir', work, '--data-root', data, timeout=600)
    table = out[out.index('| model |'):].splitlines()[2:5]
    rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]]
            for line in table}
    assert set(rows) == {'FPN', 'VT-FPN', 'all background'}
    for name in ('FPN', 'VT-FPN', 'all background'):
        assert 0 <= float(rows[name][0]) <= 100  # mIoU
    # Neck MACs: the VT-FPN neck is the cheaper one at the demo's widths.
    assert float(rows['VT-FPN'][3].split()[0]) < float(rows['FPN'][3].split()[0])
    assert 'trained in' in out and 'per class results' in out

    # Same config and data: the checkpoint is reused without running tools/train.py.
    def no_subprocess(cmd):
        raise AssertionError(f'unexpected run: {cmd}')
    monkeypatch.setattr(demo, '_run', no_subprocess)
    row = demo.DemoModel('FPN', str(ROOT / 'configs/demo/fpn_r18_vtdemo.py'))
    kwargs = dict(work_dir=str(work / 'fpn'), data_root=str(data), retrain=False,
                  tools_dir=str(ROOT / 'tools'))
    demo.train(row, iters=2, **kwargs)
    assert row.reused and row.checkpoint.endswith('iter_2.pth')
    # A changed schedule is a changed config: it trains again.
    with pytest.raises(AssertionError, match='unexpected run'):
        demo.train(demo.DemoModel('FPN', row.config), iters=3, **kwargs)
