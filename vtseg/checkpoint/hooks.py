"""The checkpoint hooks that ``configs/_base_/default_runtime.py`` declares.

Declared in the config (not switched on by a script), they work the same under vtseg's
``tools/train.py``/``tools/test.py``, mmseg's own tools, ``mim train`` and a plain
``Runner.from_cfg(cfg)`` script::

    default_hooks = dict(
        checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=4000),
        checkpoint_report=dict(type='CheckpointReportHook'))

:class:`SafeCheckpointHook` is mmengine's ``CheckpointHook`` with atomic saves, the old
checkpoint deleted only after the new one is on disk, the random number generator state
saved and restored, ``--resume`` that skips broken checkpoints, stale temporary files of
killed saves removed, and its arguments checked when it is built.
:class:`CheckpointReportHook` compares every checkpoint the Runner loads with the model
before mmengine loads it and refuses loads that would leave tensors unset or mismatched.
"""
from __future__ import annotations

import difflib
import inspect
import os.path as osp
from typing import Any, Iterable, Set

import torch
from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.runner import EpochBasedTrainLoop, Runner
from mmseg.registry import HOOKS

from .io import atomic_write, remove_stale_tmp_files
from .resume import find_resumable_checkpoint
from .state_dict import compare_state_dicts

__all__ = ['CheckpointReportHook', 'SafeCheckpointHook']

#: Arguments ``CheckpointHook`` passes to ``Runner.save_checkpoint`` itself; the others of
#: ``save_checkpoint`` can be given to the hook and are forwarded through ``**kwargs``.
_PASSED_BY_HOOK = {'self', 'out_dir', 'filename', 'file_client_args', 'save_optimizer',
                   'save_param_scheduler', 'meta', 'by_epoch', 'backend_args'}


def _parameters(fn) -> Set[str]:
    return {name for name, p in inspect.signature(fn).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _accepts_any_keyword(fn) -> bool:
    return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


def _check_forwarded(extra: Iterable[str], save_checkpoint, runner_name: str) -> None:
    """Raise ``ValueError`` for arguments neither the hook nor ``save_checkpoint`` takes."""
    extra = sorted(extra)
    if not extra or _accepts_any_keyword(save_checkpoint):
        return
    forwarded = _parameters(save_checkpoint) - _PASSED_BY_HOOK
    unknown = [k for k in extra if k not in forwarded]
    if not unknown:
        return
    valid = sorted((_parameters(CheckpointHook.__init__) - {'self'}) | forwarded)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        hints.append(f'{key!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    raise ValueError(
        f'default_hooks.checkpoint: unknown argument {", ".join(hints)}. '
        f'{runner_name}.save_checkpoint() would reject it at the first save, after '
        f'training up to it. Valid arguments: {", ".join(valid)}.')


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``: atomic saves, deletions after saves, RNG state,
    ``--resume`` past broken checkpoints, stale temporary files removed.

    Takes the arguments of ``CheckpointHook``. Arguments it does not know are forwarded
    to ``Runner.save_checkpoint`` as mmengine's hook does, but checked when the hook is
    built (and again against the Runner class in ``before_run``): a typo such as
    ``intervl=3`` is an error before training starts, naming the valid arguments. For a
    local ``out_dir`` without ``backend_args``, checkpoints are written through
    :class:`~vtseg.checkpoint.io.AtomicLocalBackend`.
    """

    priority = 'VERY_LOW'  # as CheckpointHook

    def __init__(self, *args, **kwargs) -> None:
        extra = set(kwargs) - _parameters(CheckpointHook.__init__)
        _check_forwarded(extra, Runner.save_checkpoint, 'Runner')
        super().__init__(*args, **kwargs)

    # --- start of a run: arguments, resume candidate, stale temporary files -------------
    def before_run(self, runner) -> None:
        _check_forwarded(self.args, type(runner).save_checkpoint, type(runner).__name__)
        # mmengine resumes from whatever last_checkpoint names; pick the newest readable
        # checkpoint instead (the Runner loads it right after before_run).
        if getattr(runner, '_resume', False) and getattr(runner, '_load_from', 1) is None:
            found = find_resumable_checkpoint(runner.work_dir)
            if found is not None:
                runner._load_from = found

    def before_train(self, runner) -> None:
        if self.backend_args is None and self.file_client_args is None \
                and '://' not in str(self.out_dir or runner.work_dir):
            self.backend_args = dict(backend='atomic_local')
        super().before_train(runner)
        if is_main_process() and '://' not in str(self.out_dir):
            remove_stale_tmp_files(str(self.out_dir))
            if osp.abspath(str(self.out_dir)) != osp.abspath(runner.work_dir):
                remove_stale_tmp_files(runner.work_dir)  # last_checkpoint's temporary

    # --- random number generator state -------------------------------------------------
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        rng = dict(torch=torch.get_rng_state())
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng['cuda'] = torch.cuda.get_rng_state_all()
        checkpoint['rng_state'] = rng

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Called for load_from and for resume; the state is only restored if training
        # continues from exactly where the checkpoint was saved (see _restore_rng).
        self._rng_to_restore = (checkpoint.get('rng_state'), checkpoint.get('meta', {}))

    def _restore_rng(self, runner, by_epoch: bool) -> None:
        if by_epoch != isinstance(runner.train_loop, EpochBasedTrainLoop):
            return  # IterBasedTrainLoop calls before_train_epoch too: wait for the iteration
        pending, self._rng_to_restore = getattr(self, '_rng_to_restore', None), None
        if pending is None or pending[0] is None:
            return
        rng, meta = pending
        if (runner.epoch, runner.iter) != (meta.get('epoch'), meta.get('iter')) \
                or runner.iter == 0:
            return  # load_from (fine-tuning) or a checkpoint from elsewhere in the run
        torch.set_rng_state(rng['torch'].cpu())
        if 'cuda' in rng and torch.cuda.is_available() \
                and len(rng['cuda']) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng['cuda']])

    def before_train_epoch(self, runner) -> None:
        # Epoch loops: before the epoch's dataloader iterator draws its seed.
        self._restore_rng(runner, by_epoch=True)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        # Iteration loops: after the loop has replayed the dataloader up to runner.iter.
        self._restore_rng(runner, by_epoch=False)

    # --- saving: new file first, pointer second, old files last -------------------------
    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        runner.save_checkpoint(
            self.out_dir, ckpt_filename, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta,
            by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
        if not is_main_process():
            return
        atomic_write(self.last_ckpt, osp.join(runner.work_dir, 'last_checkpoint'), 'w')
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed saves folders
                self.file_backend.rmtree(path)


@HOOKS.register_module()
class CheckpointReportHook(Hook):
    """Log what every checkpoint the Runner loads does to the model; refuse bad loads.

    Runs before mmengine copies any tensor (``after_load_checkpoint`` is called between
    reading the file and loading it), for ``load_from`` (training, ``tools/test.py``) and
    ``--resume``. Refused, with every difference listed: a checkpoint with no tensor of
    the model; model tensors missing from it or of another shape, unless allowed; on
    ``--resume`` any difference at all. The same settings govern
    :func:`vtseg.apis.init_model` and :class:`vtseg.apis.VTSegInferencer`, which read them
    from the config.

    Args:
        allow_missing: load anyway when model tensors are missing from the checkpoint
            (they keep their initial values, as logged). For starting from a checkpoint of
            a related model on purpose, e.g. an FPN checkpoint in a VT-FPN model.
        allow_shape_mismatch: load anyway when shapes differ (the mismatched tensors keep
            their initial values). For fine-tuning with another number of classes.
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_missing: bool = False, allow_shape_mismatch: bool = False) -> None:
        for name, value in [('allow_missing', allow_missing),
                            ('allow_shape_mismatch', allow_shape_mismatch)]:
            if not isinstance(value, bool):
                raise ValueError(f'default_hooks.checkpoint_report.{name} must be True or '
                                 f'False, got {value!r}')
        self.allow_missing = allow_missing
        self.allow_shape_mismatch = allow_shape_mismatch

    def after_load_checkpoint(self, runner, checkpoint: Any) -> None:
        state_dict = checkpoint.get('state_dict', checkpoint)
        report = compare_state_dicts(runner.model, state_dict)
        source = f"Checkpoint {getattr(runner, '_load_from', None) or 'being loaded'}"
        report.check(source, allow_missing=self.allow_missing,
                     allow_shape_mismatch=self.allow_shape_mismatch,
                     require_exact=bool(getattr(runner, '_resume', False)),
                     how_to_allow=PARTIAL_LOAD_HINT)
        if report.exact:
            runner.logger.info(report.format(source))
        else:
            runner.logger.warning(report.format(source))


#: How a user asks for a partial load, in every refusal message.
PARTIAL_LOAD_HINT = (
    'to load it anyway (the tensors listed keep their initial values), set '
    'default_hooks.checkpoint_report.allow_missing=True and/or allow_shape_mismatch=True, '
    'e.g. --cfg-options default_hooks.checkpoint_report.allow_missing=True')
