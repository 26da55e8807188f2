"""Everything about checkpoints, in one place.

* :mod:`.compat`: torch >= 2.6 weights-only loading of mmengine checkpoints (the only
  change vtseg makes to other packages on import);
* :mod:`.io`: atomic writes, file checks without unpickling, reads whose errors name the
  file, stale temporary files of killed saves;
* :mod:`.state_dict`: the one comparison of a checkpoint with a model, and checkpoint
  layouts;
* :mod:`.pretrained`: the ``ResNetPretrained`` weight initialiser for (VT-)ResNet backbones;
* :mod:`.resume`: which checkpoint ``--resume`` loads;
* :mod:`.hooks`: ``SafeCheckpointHook`` and ``CheckpointReportHook``, declared in
  ``configs/_base_/default_runtime.py``.

Importing it registers the hooks (mmseg ``HOOKS``), the ``atomic_local`` file backend,
the ``ResNetPretrained`` initialiser and the checked loader for local checkpoint paths.
"""
from .compat import patch_checkpoint_loading, safe_checkpoint_globals
from .hooks import CheckpointReportHook, SafeCheckpointHook
from .io import (
    AtomicLocalBackend,
    CheckpointError,
    atomic_write,
    check_checkpoint_file,
    load_checkpoint,
    register_checked_loader,
    remove_stale_tmp_files,
)
from .pretrained import ResNetPretrainedInit, load_resnet_weights
from .resume import find_resumable_checkpoint
from .state_dict import (
    CheckpointMismatchError,
    StateDictReport,
    compare_state_dicts,
    extract_state_dict,
)

patch_checkpoint_loading()
register_checked_loader()

__all__ = ['AtomicLocalBackend', 'CheckpointError', 'CheckpointMismatchError',
           'CheckpointReportHook', 'ResNetPretrainedInit', 'SafeCheckpointHook',
           'StateDictReport', 'atomic_write', 'check_checkpoint_file', 'compare_state_dicts',
           'extract_state_dict', 'find_resumable_checkpoint', 'load_checkpoint',
           'load_resnet_weights', 'patch_checkpoint_loading', 'register_checked_loader',
           'remove_stale_tmp_files', 'safe_checkpoint_globals']
