"""Distributed training without CUDA: gloo process groups under torchrun, Slurm and MPI."""
import os
import re
import socket
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_command

from vtseg.datasets.demo import generate_demo_data
from vtseg.engine.dist import _rendezvous_env

ROOT = Path(__file__).resolve().parents[2]
VTFPN = 'configs/demo/vtfpn_r18_vtdemo.py'

needs_cpu_only = pytest.mark.skipif(torch.cuda.is_available(),
                                    reason='tests the CPU code path')
RENDEZVOUS = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for name in RENDEZVOUS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_slurm_environment_is_translated(clean_env):
    clean_env.setenv('SLURM_PROCID', '3')
    clean_env.setenv('SLURM_NTASKS', '4')
    clean_env.setenv('SLURM_LOCALID', '1')
    clean_env.setenv('SLURM_NODELIST', 'node[1-2]')
    clean_env.setenv('MASTER_ADDR', 'node1')  # else read from `scontrol show hostname`
    assert _rendezvous_env('slurm') == (3, 4, 1)
    assert (os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['LOCAL_RANK'],
            os.environ['MASTER_PORT']) == ('3', '4', '1', '29500')


def test_mpi_environment_is_translated(clean_env):
    clean_env.setenv('OMPI_COMM_WORLD_RANK', '2')
    clean_env.setenv('OMPI_COMM_WORLD_SIZE', '3')
    clean_env.setenv('OMPI_COMM_WORLD_LOCAL_RANK', '0')
    clean_env.setenv('MASTER_ADDR', '10.0.0.1')
    assert _rendezvous_env('mpi') == (2, 3, 0)
    assert os.environ['WORLD_SIZE'] == '3'


def test_missing_rendezvous_names_the_launcher(clean_env):
    with pytest.raises(RuntimeError, match='torchrun'):
        _rendezvous_env('pytorch')
    with pytest.raises(RuntimeError, match='SLURM_PROCID'):
        _rendezvous_env('slurm')


# Runs in a process of its own: a process group is process-wide state, and a stuck gloo
# call then fails this test after GLOO_TIMEOUT seconds instead of hanging the suite.
GLOO_TIMEOUT = 120
GLOO_AND_DDP = """
import torch, torch.distributed as dist
from mmengine.config import Config
from mmengine.registry import MODEL_WRAPPERS
from torch import nn
from vtseg.engine import CPUDistributedDataParallel, setup_distributed

cfg = Config(dict(model_wrapper_cfg=dict(find_unused_parameters=True),
                  env_cfg=dict(dist_cfg=dict(timeout=60))))
setup_distributed(cfg, 'pytorch')
assert dist.is_initialized() and dist.get_backend() == 'gloo'
assert cfg.env_cfg.dist_cfg.backend == 'gloo'
assert cfg.model_wrapper_cfg == dict(type='CPUDistributedDataParallel',
                                     find_unused_parameters=True, broadcast_buffers=False)
# What Runner.wrap_model does with a DDP subclass:
model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SyncBatchNorm(4), nn.Conv2d(4, 2, 1))
wrapper = MODEL_WRAPPERS.build(dict(cfg.model_wrapper_cfg),
                               default_args=dict(module=model, device_ids=[0]))
assert isinstance(wrapper, CPUDistributedDataParallel)
assert not any(isinstance(m, nn.SyncBatchNorm) for m in wrapper.modules())
wrapper(torch.randn(2, 3, 8, 8)).sum().backward()
assert all(p.grad is not None for p in wrapper.parameters())
dist.destroy_process_group()
print('gloo and DDP ok')
"""


@needs_cpu_only
def test_gloo_group_and_cpu_ddp_wrapper():
    """setup_distributed starts gloo (no CUDA call) and the Runner-style wrapper call with
    ``device_ids`` yields a working DDP module without SyncBN."""
    env = {k: v for k, v in os.environ.items() if k not in RENDEZVOUS}
    env.update(RANK='0', WORLD_SIZE='1', LOCAL_RANK='0', MASTER_ADDR='127.0.0.1',
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    proc = run_command([sys.executable, '-c', GLOO_AND_DDP], cwd=ROOT, env=env,
                       timeout=GLOO_TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert 'gloo and DDP ok' in out


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('vtdemo')
    generate_demo_data(root, num_train=8, num_val=4, seed=0, size=48, verbose=False)
    return root


def _tiny_cli(data_root):
    from helpers import as_cli, tiny_options
    return as_cli(tiny_options(data_root, iters=4, ckpt_interval=4))


def _run_script(*args, timeout=300):
    env = dict(os.environ, PORT=str(free_port()), PYTHON=sys.executable,
               OMP_WAIT_POLICY='PASSIVE', PYTHONWARNINGS='ignore')
    proc = run_command(['bash', *args], cwd=ROOT, env=env, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


@needs_cpu_only
@pytest.mark.slow
def test_dist_train_and_test_with_two_gloo_processes(data_root, tmp_path):
    work_dir = tmp_path / 'dist'
    out = _run_script('tools/dist_train.sh', VTFPN, 2, '--work-dir', work_dir,
                      *_tiny_cli(data_root))
    assert 'started a gloo process group (rank 0 of 2)' in out
    assert 'Distributed training is not used' not in out
    assert re.search(r'Iter\(val\) \[\d+/\d+\]\s+aAcc: [\d.]+\s+mIoU: [\d.]+', out)
    # 8 images, batch 2 per process: each iteration consumes 4 images.
    assert 'Iter(train) [4/4]' in out
    assert (work_dir / 'iter_4.pth').is_file()

    out = _run_script('tools/dist_test.sh', VTFPN, work_dir / 'iter_4.pth', 2,
                      '--work-dir', tmp_path / 'test', *_tiny_cli(data_root))
    assert 'per class results' in out
    assert re.search(r'aAcc: [\d.]+\s+mIoU: [\d.]+', out)
