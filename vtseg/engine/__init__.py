"""Training and testing machinery behind ``tools/``: CPU/GPU distributed set-up, mixed
precision on the CPU, config preparation as mmseg's tools do it, the pre-flight forward,
one training run per work dir, host memory reuse.

Importing it registers :class:`CPUDistributedDataParallel` (mmengine ``MODEL_WRAPPERS``),
:class:`BF16OptimWrapper` (mmengine ``OPTIM_WRAPPERS``), :class:`ClassIoUMetric`
(mmseg ``METRICS``), :class:`ModelCheckHook`, :class:`WorkDirLockHook` and
:class:`HostMemoryHook` (mmseg ``HOOKS``). The checkpoint hooks live in :mod:`vtseg.checkpoint`.
"""
from .dist import init_cpu_dist, setup_distributed
from .host_memory import HostMemoryHook, host_memory_reused, reuse_host_memory
from .metrics import ClassIoUMetric
from .model_wrapper import CPUDistributedDataParallel
from .optim_wrapper import BF16OptimWrapper
from .preflight import ModelCheckHook, ModelConfigError, check_model_forward
from .runner import (
                     build_runner,
                     enable_amp,
                     load_config,
                     prepare_test_cfg,
                     prepare_train_cfg,
                     read_test_metrics,
)
from .work_dir_lock import WorkDirInUseError, WorkDirLockHook

__all__ = ['BF16OptimWrapper', 'CPUDistributedDataParallel', 'ClassIoUMetric',
           'build_runner', 'enable_amp', 'init_cpu_dist', 'load_config', 'prepare_test_cfg',
           'prepare_train_cfg', 'read_test_metrics', 'setup_distributed',
           'ModelCheckHook', 'ModelConfigError', 'check_model_forward', 'WorkDirInUseError',
           'WorkDirLockHook', 'HostMemoryHook', 'host_memory_reused', 'reuse_host_memory']
