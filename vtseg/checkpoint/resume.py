"""Which checkpoint ``--resume`` loads: the newest one that is complete.

mmengine resumes from the file ``last_checkpoint`` names and dies if it is truncated or
gone (deleted by ``max_keep_ckpts``, or never finished). :func:`find_resumable_checkpoint`
checks it without unpickling and falls back to the newest readable ``iter_N.pth`` /
``epoch_N.pth``; :class:`~vtseg.checkpoint.hooks.SafeCheckpointHook` uses it before the
Runner resumes.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from typing import List, Optional, Tuple

from mmengine.logging import print_log

from .io import CheckpointError, check_checkpoint_file

__all__ = ['find_resumable_checkpoint']

_STEP = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def _step_of(name: str) -> Optional[Tuple[str, int]]:
    m = _STEP.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` should load from ``work_dir``, skipping broken ones.

    The file named by ``last_checkpoint`` comes first; if it is missing, truncated or
    corrupt, the ``epoch_N.pth`` / ``iter_N.pth`` files of ``work_dir`` follow, newest
    (largest N) first. Each broken candidate is reported with a warning naming it.

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
