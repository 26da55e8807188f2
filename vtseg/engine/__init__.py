"""Training and testing machinery behind ``tools/``: CPU/GPU distributed set-up, mixed
precision on the CPU, config preparation as mmseg's tools do it, and the demo.

Importing it registers :class:`CPUDistributedDataParallel` (mmengine ``MODEL_WRAPPERS``),
:class:`BF16OptimWrapper` (mmengine ``OPTIM_WRAPPERS``), :class:`ClassIoUMetric`
(mmseg ``METRICS``) and :class:`SafeCheckpointHook` / :class:`CheckpointReportHook` /
:class:`WorkDirLockHook` (mmseg ``HOOKS``, see ``docs/reliability.md``).
"""
from .dist import init_cpu_dist, setup_distributed
from .load_report import CheckpointReportHook
from .metrics import ClassIoUMetric
from .model_wrapper import CPUDistributedDataParallel
from .optim_wrapper import BF16OptimWrapper
from .preflight import ModelConfigError, check_model_forward
from .runner import (
                     build_runner,
                     enable_amp,
                     load_config,
                     prepare_test_cfg,
                     prepare_train_cfg,
                     read_test_metrics,
)
from .safe_checkpoint import (
                              CheckpointError,
                              SafeCheckpointHook,
                              check_checkpoint_file,
                              setup_safe_checkpointing,
)
from .work_dir_lock import WorkDirInUseError, WorkDirLockHook

__all__ = ['BF16OptimWrapper', 'CPUDistributedDataParallel', 'ClassIoUMetric',
           'build_runner', 'enable_amp', 'init_cpu_dist', 'load_config', 'prepare_test_cfg',
           'prepare_train_cfg', 'read_test_metrics', 'setup_distributed',
           'CheckpointError', 'CheckpointReportHook', 'ModelConfigError', 'SafeCheckpointHook',
           'check_checkpoint_file', 'check_model_forward', 'setup_safe_checkpointing',
           'WorkDirInUseError', 'WorkDirLockHook']
