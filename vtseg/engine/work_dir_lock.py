"""One training run per work dir: a lock file taken before the first iteration.

Two runs started in the same ``work_dir`` write the same ``iter_N.pth`` and
``last_checkpoint`` and resume from each other's files without a word. Whatever starts a
run (vtseg's ``tools/train.py``, mmseg's own ``tools/train.py``, a plain mmengine
``Runner`` script) builds the hooks its config declares, so the lock is a hook,
:class:`WorkDirLockHook`, declared in ``configs/_base_/default_runtime.py``.

The lock is ``<work_dir>/.vtseg_train.lock``, a small JSON file naming the process that
holds it (pid, host, the process's start time, the command line). It is taken in
``before_run`` of a training run, before any checkpoint is loaded or written, and removed
in ``after_run`` or when the process exits. A lock whose process no longer runs (a run
killed with ``SIGKILL``, a machine that rebooted, a recycled pid) is stale: the next run
takes it over with a warning, so ``--resume`` after a kill just works. A lock taken on
another host cannot be checked from here and is respected; the error says how to remove
it. Testing (``Runner.test``/``val``) writes only into its own ``<timestamp>/`` folder and
takes no lock. In distributed runs rank 0 takes the lock and every rank gets its answer.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import os.path as osp
import socket
import sys
import time
from typing import Iterator, Optional

from mmengine.dist import broadcast_object_list, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.runner import BaseLoop
from mmseg.registry import HOOKS

__all__ = ['LOCK_NAME', 'WorkDirInUseError', 'WorkDirLockHook', 'acquire_work_dir',
           'release_work_dir', 'read_lock']

LOCK_NAME = '.vtseg_train.lock'


class WorkDirInUseError(RuntimeError):
    """Another live training run holds the work dir; the message names it and the fix."""


def _proc_stat(pid: int) -> Optional[tuple]:
    """``(state, start time in clock ticks)`` from ``/proc/<pid>/stat``, or None."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def _this_process() -> dict:
    stat = _proc_stat(os.getpid())
    return dict(pid=os.getpid(), host=socket.gethostname(),
                proc_start=stat[1] if stat else None,
                started=time.strftime('%Y-%m-%d %H:%M:%S %Z'),
                command=' '.join([osp.basename(sys.executable)] + sys.argv))


def _alive(holder: dict) -> bool:
    """Whether the process ``holder`` names still runs (on this host)."""
    pid = holder.get('pid')
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no /proc: trust kill()
        return True
    state, start = stat
    if state in ('Z', 'X'):  # killed, not yet reaped by its parent
        return False
    return holder.get('proc_start') in (None, start)  # else the pid was reused


def read_lock(work_dir: str) -> Optional[dict]:
    """The holder recorded in ``work_dir``'s lock file; None without one, ``{}`` if the
    file is unreadable (treated as stale)."""
    path = osp.join(work_dir, LOCK_NAME)
    try:
        with open(path, encoding='utf-8') as f:
            holder = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def _guard(work_dir: str) -> Iterator[None]:
    """Serialise lock changes of one work dir (``flock`` on the folder, where available)."""
    try:
        import fcntl
        fd = os.open(work_dir, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # file systems without flock: best effort
            pass
        yield
    finally:
        os.close(fd)  # releases the flock


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')} (command: {holder.get('command', '?')})")


def acquire_work_dir(work_dir: str, *, log=print) -> dict:
    """Take ``work_dir``'s lock for this process, or raise if a live run holds it.

    Args:
        work_dir: the run's work dir (created if missing).
        log: ``log(message)`` for the stale-lock warning.

    Returns:
        What was written to the lock file.

    Raises:
        WorkDirInUseError: another live process (or a process on another host) holds it.
    """
    os.makedirs(work_dir, exist_ok=True)
    path = osp.join(work_dir, LOCK_NAME)
    me = _this_process()
    with _guard(work_dir):
        holder = read_lock(work_dir)
        if holder:
            ours = holder.get('host') == me['host'] and holder.get('pid') == me['pid']
            if holder.get('host') != me['host']:
                raise WorkDirInUseError(
                    f'work_dir {work_dir!r} is locked by a training run on another host: '
                    f'{_describe(holder)}. Two runs in one work_dir overwrite each other\'s '
                    'checkpoints and last_checkpoint. Give this run its own folder '
                    '(tools/train.py --work-dir DIR, or work_dir=DIR in the config); if '
                    f'that run has ended, delete {path}.')
            if not ours and _alive(holder):
                raise WorkDirInUseError(
                    f'work_dir {work_dir!r} is in use by another training run: '
                    f'{_describe(holder)}. Two runs in one work_dir overwrite each other\'s '
                    'checkpoints and last_checkpoint. Wait for that run to end (or stop '
                    'it), or give this run its own folder (tools/train.py --work-dir DIR, '
                    f'or work_dir=DIR in the config). Lock file: {path}.')
            if not ours:
                log(f'work_dir {work_dir!r} was locked by a run that is no longer running '
                    f'({_describe(holder)}); taking the lock over.')
        elif holder == {}:
            log(f'{path} is unreadable; taking the lock over.')
        tmp = f'{path}.{me["pid"]}.tmp'
        with open(tmp, 'w', encoding='utf-8') as f:
            json.dump(me, f)
        os.replace(tmp, path)
    return me


def release_work_dir(work_dir: str) -> bool:
    """Remove ``work_dir``'s lock if this process holds it; return whether it did."""
    with _guard(work_dir) if osp.isdir(work_dir) else contextlib.nullcontext():
        holder = read_lock(work_dir)
        if not holder or holder.get('pid') != os.getpid() \
                or holder.get('host') != socket.gethostname():
            return False
        with contextlib.suppress(FileNotFoundError):
            os.remove(osp.join(work_dir, LOCK_NAME))
    return True


@HOOKS.register_module()
class WorkDirLockHook(Hook):
    """Refuse to train in a work dir another live training run is using.

    Declared in ``configs/_base_/default_runtime.py``; keep it when a config replaces
    ``custom_hooks``. Raises :class:`WorkDirInUseError` in ``before_run``, before any
    checkpoint is loaded or written.
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        self._held: Optional[str] = None

    def before_run(self, runner) -> None:
        if not isinstance(getattr(runner, '_train_loop', None), BaseLoop):
            return  # val/test runs write into their own <timestamp>/ folder
        error = None
        if is_main_process():
            try:
                acquire_work_dir(runner.work_dir, log=runner.logger.warning)
                self._held = runner.work_dir
                atexit.register(release_work_dir, runner.work_dir)
            except WorkDirInUseError as err:
                error = str(err)
        if get_world_size() > 1:  # every rank stops, or none does
            box = [error]
            broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise WorkDirInUseError(error)

    def after_run(self, runner) -> None:
        if self._held is not None:
            release_work_dir(self._held)
            self._held = None
