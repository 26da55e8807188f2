"""Multi-process training on machines without CUDA (the gloo backend).

mmengine 0.10.7 assumes a GPU per process once a launcher is given: its ``init_dist``
calls ``torch.cuda.set_device`` for every launcher, the Runner then wraps the model in
``DistributedDataParallel(device_ids=[LOCAL_RANK])``, which DDP rejects for CPU modules,
and SyncBN refuses CPU tensors. :func:`setup_distributed` sidesteps all three without
touching mmengine: it starts the gloo process group itself (the Runner sees an initialised
group and skips its own ``init_dist``) and selects
:class:`~vtseg.engine.model_wrapper.CPUDistributedDataParallel` as the model wrapper. With
CUDA present it changes nothing, so the same command runs on both kinds of machine.
"""
from __future__ import annotations

import atexit
import datetime
import os
import subprocess
from typing import Optional, Tuple

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log

__all__ = ['LAUNCHERS', 'cuda_available', 'finish_distributed', 'init_cpu_dist',
           'setup_distributed']

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
DEFAULT_PORT = '29500'  # torch.distributed's default


def cuda_available() -> bool:
    """Whether this process would train on a CUDA device."""
    return torch.cuda.is_available()


def _require_env(launcher: str, *names: str) -> Tuple[str, ...]:
    missing = [name for name in names if name not in os.environ]
    if missing:
        how = {'pytorch': 'start it with torchrun (tools/dist_train.sh, tools/dist_test.sh)',
               'slurm': 'start it with srun (tools/slurm_train.sh, tools/slurm_test.sh)',
               'mpi': 'start it with mpirun (Open MPI)'}[launcher]
        raise RuntimeError(f'--launcher {launcher} needs the environment variables '
                           f'{", ".join(missing)}, which are not set: {how}, or use '
                           '--launcher none for a single process')
    return tuple(os.environ[name] for name in names)


def _rendezvous_env(launcher: str) -> Tuple[int, int, int]:
    """Fill RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT as mmengine would.

    Returns:
        ``(rank, world_size, local_rank)``.
    """
    if launcher == 'pytorch':  # torchrun sets everything
        rank, world, local = _require_env(launcher, 'RANK', 'WORLD_SIZE', 'LOCAL_RANK')
        _require_env(launcher, 'MASTER_ADDR', 'MASTER_PORT')
    elif launcher == 'slurm':
        rank, world, nodes = _require_env(launcher, 'SLURM_PROCID', 'SLURM_NTASKS',
                                          'SLURM_NODELIST')
        local = os.environ.get('SLURM_LOCALID', '0')
        if 'MASTER_ADDR' not in os.environ:
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {nodes} | head -n1')
        os.environ.setdefault('MASTER_PORT', DEFAULT_PORT)
    elif launcher == 'mpi':
        rank, world, local = _require_env(launcher, 'OMPI_COMM_WORLD_RANK',
                                          'OMPI_COMM_WORLD_SIZE',
                                          'OMPI_COMM_WORLD_LOCAL_RANK')
        _require_env(launcher, 'MASTER_ADDR')
        os.environ.setdefault('MASTER_PORT', DEFAULT_PORT)
    else:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    os.environ.update(RANK=rank, WORLD_SIZE=world, LOCAL_RANK=local)
    return int(rank), int(world), int(local)


def init_cpu_dist(launcher: str, *, timeout: Optional[float] = None) -> Tuple[int, int]:
    """Start a gloo process group for ``launcher`` (no CUDA calls).

    Args:
        launcher: ``'pytorch'`` (torchrun), ``'slurm'`` or ``'mpi'``.
        timeout: collective timeout in seconds (mmengine's ``dist_cfg.timeout``).

    Returns:
        ``(rank, world_size)``.
    """
    rank, world, _ = _rendezvous_env(launcher)
    kwargs = {}
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=float(timeout))
    torch_dist.init_process_group(backend='gloo', init_method='env://', rank=rank,
                                  world_size=world, **kwargs)
    # Fallback for error paths; a finished run calls finish_distributed() instead.
    atexit.register(_destroy_process_group)
    return rank, world


def _destroy_process_group() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def finish_distributed() -> None:
    """End a gloo process group started by :func:`init_cpu_dist` after a finished run.

    A process that leaves while its gloo group (and rank 0's TCP store) is still in use by
    a slower rank can abort at interpreter exit ("terminate called without an active
    exception", SIGABRT), which torchrun reports as a failed run. A barrier lets every rank
    finish first; then the group is destroyed. Does nothing for NCCL groups or without a
    group. Call it only after success: a barrier on an error path could wait for ranks
    that are stuck elsewhere.
    """
    if torch_dist.is_initialized() and torch_dist.get_backend() == 'gloo':
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def setup_distributed(cfg: Config, launcher: str) -> Config:
    """Make ``cfg`` run under ``launcher`` on this machine; returns ``cfg`` (edited in place).

    Without CUDA and with a launcher, starts the gloo process group, sets
    ``env_cfg.dist_cfg.backend='gloo'`` and selects ``CPUDistributedDataParallel`` (keeping
    any other ``model_wrapper_cfg`` arguments, e.g. ``find_unused_parameters``). With CUDA,
    or for ``launcher='none'``, only records the launcher (mmengine does the rest).
    """
    if launcher not in LAUNCHERS:
        raise ValueError(f'--launcher must be one of {LAUNCHERS}, got {launcher!r}')
    cfg.launcher = launcher
    if launcher == 'none' or cuda_available():
        return cfg
    # Assign, then read back: ConfigDict.setdefault returns the plain default, not the
    # ConfigDict it stores.
    if not cfg.get('env_cfg'):
        cfg.env_cfg = {}
    if not cfg.env_cfg.get('dist_cfg'):
        cfg.env_cfg.dist_cfg = {}
    dist_cfg = cfg.env_cfg.dist_cfg
    dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        rank, world = init_cpu_dist(launcher, timeout=dist_cfg.get('timeout'))
        print_log(f'CUDA is not available: started a gloo process group (rank {rank} of '
                  f'{world}) and will train with CPUDistributedDataParallel',
                  logger='current')
    wrapper = cfg.get('model_wrapper_cfg') or {}
    wrapper_type = wrapper.get('type', 'MMDistributedDataParallel')
    if wrapper_type not in ('MMDistributedDataParallel', 'CPUDistributedDataParallel'):
        raise ValueError(f'model_wrapper_cfg.type={wrapper_type!r} cannot run without CUDA; '
                         'vtseg replaces only MMDistributedDataParallel by '
                         'CPUDistributedDataParallel. Remove model_wrapper_cfg.type or run '
                         'on GPUs')
    wrapper = dict(wrapper, type='CPUDistributedDataParallel')
    # What the Runner passes to its default wrapper when model_wrapper_cfg is unset.
    wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    wrapper.setdefault('broadcast_buffers', False)
    cfg.model_wrapper_cfg = wrapper
    return cfg
