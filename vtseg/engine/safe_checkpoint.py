"""Checkpoints that survive interrupted saves, and ``--resume`` that survives them too.

mmengine 0.10.7 writes a checkpoint with ``open(path, 'wb').write(...)``: a run killed while
saving leaves a truncated ``iter_N.pth``, and ``last_checkpoint`` may already name it (or
name a file that ``max_keep_ckpts`` deleted before the new one was written). ``--resume``
then dies in ``torch.load`` with ``PytorchStreamReader failed reading zip archive``, an
error that names no file. This module fixes both sides:

* :class:`AtomicLocalBackend` writes to a temporary file in the same folder, ``fsync``s it
  and ``os.replace``s it over the target: readers see the old file or the complete new one.
* :class:`SafeCheckpointHook` is mmengine's ``CheckpointHook`` with atomic writes of the
  checkpoint and of ``last_checkpoint``, old checkpoints removed only *after* the new one is
  on disk, and the torch (and CUDA) random number generator state saved in the checkpoint
  and restored on resume, so that a resumed run draws the same dropout masks as an
  uninterrupted one (mmengine restores the seed, not the generator state).
* :func:`check_checkpoint_file` tells a readable checkpoint from a truncated or corrupt one
  without unpickling it, and :func:`find_resumable_checkpoint` picks the newest readable
  checkpoint of a work dir, warning about each broken one it passes over.
* :func:`register_checked_loader` makes mmengine's local checkpoint loading (``load_from``,
  ``--resume``, ``tools/test.py``) raise :class:`CheckpointError` naming the file when the
  file is truncated or corrupt.

:func:`setup_safe_checkpointing` applies all of it to a config; ``tools/train.py`` calls it.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
import tempfile
import zipfile
from typing import List, Optional, Tuple, Union

import torch
from mmengine.config import Config
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader, EpochBasedTrainLoop
from mmseg.registry import HOOKS

__all__ = ['AtomicLocalBackend', 'CheckpointError', 'SafeCheckpointHook',
           'check_checkpoint_file', 'find_resumable_checkpoint', 'register_checked_loader',
           'setup_safe_checkpointing']

_STEP = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file."""


def _atomic_write(data: Union[bytes, str], path: str, mode: str, encoding=None) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=folder)
    # mkstemp creates the file 0600; give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


@register_backend('atomic_local')
class AtomicLocalBackend(LocalBackend):
    """mmengine's ``LocalBackend`` whose ``put``/``put_text`` replace files atomically."""

    def put(self, obj: bytes, filepath) -> None:
        _atomic_write(obj, str(filepath), 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        _atomic_write(obj, str(filepath), 'w', encoding=encoding)


def check_checkpoint_file(path: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a complete checkpoint archive.

    Checks the zip structure ``torch.save`` writes (a truncated file has no central
    directory) and the CRC-32 of every record when torch stored them; nothing is
    unpickled. Files in torch's legacy (non-zip) format are accepted unchecked.
    """
    if not osp.isfile(path):
        raise CheckpointError(f'Checkpoint {path!r} does not exist.')
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointError(f'Checkpoint {path!r} is empty (0 bytes): its save was '
                              'interrupted. Delete it and resume from an earlier checkpoint.')
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if any(r.CRC for r in records):  # torch >= 2.6 can skip CRCs (all zero then)
                bad = archive.testzip()
                if bad is not None:
                    raise CheckpointError(f'Checkpoint {path!r} is corrupt: record {bad!r} '
                                          'fails its CRC-32 check.')
            elif any(r.header_offset + r.compress_size > size for r in records):
                raise zipfile.BadZipFile('a record extends past the end of the file')
    except zipfile.BadZipFile as e:
        with open(path, 'rb') as f:
            legacy = f.read(2) == b'\x80\x02'  # torch < 1.6 format: a bare pickle
        if not legacy:
            raise CheckpointError(
                f'Checkpoint {path!r} ({size} bytes) is truncated or corrupt ({e}); it was '
                'probably written by a save that was interrupted. Delete it and resume '
                'from an earlier checkpoint.') from e


def _step_of(name: str) -> Optional[Tuple[str, int]]:
    m = _STEP.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` should load from ``work_dir``, skipping broken ones.

    The file named by ``last_checkpoint`` comes first; if it is missing, truncated or
    corrupt, the ``epoch_N.pth`` / ``iter_N.pth`` files of ``work_dir`` follow, newest
    (largest N) first. Each broken candidate is reported with a warning.

    Returns:
        The path of the first readable checkpoint, or ``None`` if ``work_dir`` holds no
        ``last_checkpoint`` and no checkpoint (a fresh start).

    Raises:
        CheckpointError: checkpoints exist but none of them is readable.
    """
    candidates: List[str] = []
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named:
            candidates.append(named)
    if osp.isdir(work_dir):
        steps = [(_step_of(n), n) for n in os.listdir(work_dir)]
        for _, name in sorted((s for s in steps if s[0]), key=lambda s: -s[0][1]):
            path = osp.join(work_dir, name)
            if not any(osp.abspath(c) == osp.abspath(path) for c in candidates):
                candidates.append(path)
    if not candidates:
        return None
    broken = []
    for path in candidates:
        try:
            check_checkpoint_file(path)
        except CheckpointError as e:
            broken.append(str(e))
            print_log(f'Not resuming from {path}: {e}', logger='current', level=logging.WARNING)
            continue
        if broken:
            print_log(f'Resuming from {path}, the newest readable checkpoint.',
                      logger='current', level=logging.WARNING)
        return path
    raise CheckpointError(f'No readable checkpoint to resume from in {work_dir!r}:\n  '
                          + '\n  '.join(broken) + '\nDelete the broken files (and '
                          "'last_checkpoint') to start training from scratch.")


_LOCAL_LOADER_WRAPPED = '_vtseg_checked'


def register_checked_loader() -> None:
    """Wrap mmengine's loader for local paths so a broken file's error names it.

    Only errors raised by a file that :func:`check_checkpoint_file` rejects are replaced;
    others (a weights-only ``UnpicklingError``, a missing file) pass through unchanged.
    Safe to call more than once.
    """
    current = CheckpointLoader._schemes.get('')
    if current is None or getattr(current, _LOCAL_LOADER_WRAPPED, False):
        return

    def load_from_local_checked(filename, map_location):
        try:
            return current(filename, map_location)
        except Exception:
            path = osp.expanduser(filename)
            if osp.isfile(path):
                check_checkpoint_file(path)  # raises CheckpointError naming the file
            raise

    setattr(load_from_local_checked, _LOCAL_LOADER_WRAPPED, True)
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_checked, force=True)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook``: atomic saves, deletions after saves, RNG state.

    Takes the arguments of ``CheckpointHook``. For a local ``out_dir`` without
    ``backend_args``, checkpoints are written through :class:`AtomicLocalBackend`.
    """

    def before_train(self, runner) -> None:
        if self.backend_args is None and self.file_client_args is None \
                and '://' not in str(self.out_dir or runner.work_dir):
            self.backend_args = dict(backend='atomic_local')
        super().before_train(runner)

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
        _atomic_write(self.last_ckpt, osp.join(runner.work_dir, 'last_checkpoint'), 'w')
        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):  # DeepSpeed saves folders
                self.file_backend.rmtree(path)


def setup_safe_checkpointing(cfg: Config) -> Config:
    """Make a training or test config use vtseg's checkpoint safety (in place).

    * ``default_hooks.checkpoint`` of type ``CheckpointHook`` becomes
      :class:`SafeCheckpointHook` (same arguments);
    * a :class:`~vtseg.engine.load_report.CheckpointReportHook` is added to
      ``custom_hooks`` unless one is there;
    * with ``cfg.resume`` and no ``cfg.load_from``, ``cfg.load_from`` is set to
      :func:`find_resumable_checkpoint` of ``cfg.work_dir`` (mmengine's Runner then resumes
      from it instead of trusting ``last_checkpoint``);
    * broken local checkpoint files raise errors that name them
      (:func:`register_checked_loader`).

    Returns:
        ``cfg``.
    """
    from .load_report import CheckpointReportHook  # noqa: F401  (registers the hook)
    register_checked_loader()
    hooks = cfg.get('default_hooks') or {}
    ckpt = hooks.get('checkpoint')
    if ckpt is not None and ckpt.get('type') in ('CheckpointHook', CheckpointHook):
        ckpt['type'] = 'SafeCheckpointHook'
    custom = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') == 'CheckpointReportHook' for h in custom):
        custom.append(dict(type='CheckpointReportHook'))
    cfg.custom_hooks = custom
    if cfg.get('resume') and not cfg.get('load_from') and cfg.get('work_dir'):
        found = find_resumable_checkpoint(cfg.work_dir)
        if found is not None:
            cfg.load_from = found
    return cfg
