"""Checkpoint files: atomic writes, checks that need no unpickling, reads whose errors name
the file, and the temporary files an interrupted save leaves behind.

mmengine 0.10.7 writes a checkpoint with ``open(path, 'wb').write(...)``: a run killed while
saving leaves a truncated ``iter_N.pth``, and loading it dies in ``torch.load`` with
``PytorchStreamReader failed reading zip archive``, an error that names no file. Random
bytes or a plain pickle renamed ``.pth`` get torch's advice to retry with
``weights_only=False``, which is wrong for the first and unsafe for the second.

* :class:`AtomicLocalBackend` (file backend ``'atomic_local'``) writes to a temporary file
  in the same folder, ``fsync``\\ s it and ``os.replace``\\ s it over the target: readers see
  the old file or the complete new one. The temporary name records host and process
  (``.iter_8.pth.<host>-<pid>.<random>.tmp``) so that :func:`remove_stale_tmp_files` can
  tell a file left by a killed save from one a running save is still writing.
* :func:`check_checkpoint_file` tells a complete checkpoint from a truncated, corrupt or
  foreign file without unpickling it.
* :func:`load_checkpoint` reads a checkpoint with mmengine's
  :class:`~mmengine.runner.CheckpointLoader`, keeping weights-only loading, and replaces
  torch's errors by a :class:`CheckpointError` that names the file, says what it is and
  what to do. :func:`register_checked_loader` (called on ``import vtseg``) makes mmengine's
  loader for local paths do the same, so ``load_from``, ``--resume``, ``tools/test.py``
  (vtseg's and mmseg's), ``init_model`` and ``MMSegInferencer`` all give these errors.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import pickle
import re
import socket
import tempfile
import zipfile
from typing import Any, List, Union

import torch
from mmengine.fileio import LocalBackend, register_backend
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader

__all__ = ['AtomicLocalBackend', 'CheckpointError', 'atomic_write', 'check_checkpoint_file',
           'load_checkpoint', 'register_checked_loader', 'remove_stale_tmp_files']

#: ``torch.save(..., _use_new_zipfile_serialization=False)`` (torch < 1.6): pickle protocol 2
#: followed by torch's magic number (a long of 10 bytes).
_LEGACY_TORCH_MAGIC = b'\x80\x02\x8a\x0a'
_ZIP_MAGIC = b'PK\x03\x04'
_HOST = re.sub(r'[^A-Za-z0-9_.]', '_', socket.gethostname()) or 'host'
#: ``.<target>.<host>-<pid>.<random>.tmp`` (this module) or ``.<target>.<random>.tmp``
#: (vtseg 0.1.0 before host and process were recorded).
_TMP = re.compile(r'^\.(?P<target>(?:epoch|iter)_\d+\.pth|last_checkpoint)\.'
                  r'(?:(?P<host>.+)-(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp$')


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file and the fix."""


# ----------------------------------------------------------------------------- writing
def atomic_write(data: Union[bytes, str], path: str, mode: str = 'wb',
                 encoding: Union[str, None] = None) -> None:
    """Write ``data`` to ``path`` through a temporary file, ``fsync`` and ``os.replace``."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.{_HOST}-{os.getpid()}.',
                               suffix='.tmp', dir=folder)
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
        atomic_write(obj, str(filepath), 'wb')

    def put_text(self, obj: str, filepath, encoding: str = 'utf-8') -> None:
        atomic_write(obj, str(filepath), 'w', encoding=encoding)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_tmp_files(folder: str) -> List[str]:
    """Delete the temporary files of checkpoint saves that were killed, in ``folder``.

    A file is stale when the process that wrote it (same host) no longer runs, or when its
    name records no process (older vtseg). Files of running saves and of other hosts are
    kept. Each removal is logged with the file name and size.

    Returns:
        The paths removed.
    """
    if not osp.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        m = _TMP.match(name)
        if m is None:
            continue
        if m.group('pid') is not None and (m.group('host') != _HOST
                                           or _process_alive(int(m.group('pid')))):
            continue
        path = osp.join(folder, name)
        try:
            size = osp.getsize(path)
            os.remove(path)
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(path)
        print_log(f'Removed {path} ({size / 2**20:.1f} MiB): the temporary file of a save '
                  f'of {m.group("target")} that was interrupted (the process that wrote it '
                  'is gone).', logger='current', level=logging.WARNING)
    return removed


# ----------------------------------------------------------------------------- checking
def check_checkpoint_file(path: str) -> None:
    """Raise :class:`CheckpointError` unless ``path`` looks like a complete checkpoint.

    Checks the zip structure ``torch.save`` writes (a truncated file has no central
    directory) and the CRC-32 of every record when torch stored them; nothing is
    unpickled. Files in torch's legacy (non-zip) format are accepted unchecked; plain
    pickles and other files are named as what they are.
    """
    if not osp.isfile(path):
        raise CheckpointError(f'Checkpoint {path!r} does not exist.')
    size = osp.getsize(path)
    if size == 0:
        raise CheckpointError(f'Checkpoint {path!r} is empty (0 bytes): its save was '
                              'interrupted. Delete it and resume from an earlier checkpoint.')
    with open(path, 'rb') as f:
        head = f.read(4)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return
    if head[:1] == b'\x80':  # pickle PROTO opcode: a pickle, but not torch.save output
        raise CheckpointError(_plain_pickle_message(path))
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
        if head != _ZIP_MAGIC:
            raise CheckpointError(
                f'{path!r} ({size} bytes) is not a PyTorch checkpoint: it is neither the zip '
                'archive torch.save writes nor a pickle (it starts with bytes '
                f'{head!r}). Pass a .pth file written by torch.save or tools/train.py.'
            ) from e
        raise CheckpointError(
            f'Checkpoint {path!r} ({size} bytes) is truncated or corrupt ({e}); it was '
            'probably written by a save that was interrupted. Delete it and resume '
            'from an earlier checkpoint.') from e


def _plain_pickle_message(path: str) -> str:
    return (f'{path!r} is a plain pickle (written with pickle.dump, not torch.save): reading '
            'it needs unsafe unpickling (torch.load(..., weights_only=False)), which can run '
            'any code the file contains, so vtseg does not do it. If you trust the file, '
            'convert it once: obj = torch.load(path, weights_only=False); '
            "torch.save(obj.get('state_dict', obj), 'weights.pth'), and use weights.pth.")


def _unsafe_globals(path: str) -> List[str]:
    """What a zip checkpoint needs beyond the allow-listed globals (nothing executed)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # older torch, or a file it cannot list
        return []


def _weights_only_message(path: str, err: Exception) -> str:
    needed = _unsafe_globals(path)
    what = (f'it holds {", ".join(needed)}, which' if needed else
            'it holds Python objects that')
    hint = ''
    if 'builtins.getattr' in needed or 'getattr' in str(err):
        hint = (' builtins.getattr is what mmengine writes when a training run saves its '
                'message hub without vtseg imported.')
    return (f'Checkpoint {path!r} needs unsafe unpickling: {what} weights-only loading '
            f'refuses, because unpickling them can run arbitrary code.{hint} If you trust '
            'the file, keep only its weights: obj = torch.load(path, weights_only=False); '
            "torch.save({'state_dict': obj['state_dict'], 'meta': obj.get('meta', {})}, "
            "'weights.pth'), and use weights.pth.")


def explain_load_error(path: str, err: Exception) -> Union[CheckpointError, None]:
    """A :class:`CheckpointError` for ``err`` raised while reading local file ``path``, or
    ``None`` when ``err`` is not about the file (e.g. an out-of-memory error)."""
    path = osp.expanduser(path)
    if not osp.isfile(path):
        return None
    try:
        check_checkpoint_file(path)
    except CheckpointError as found:
        return found
    if isinstance(err, pickle.UnpicklingError) and 'eights only load' in str(err):
        return CheckpointError(_weights_only_message(path, err))
    if isinstance(err, (pickle.UnpicklingError, EOFError, IndexError, KeyError, ValueError,
                        RuntimeError)):
        return CheckpointError(f'Checkpoint {path!r} cannot be read ({type(err).__name__}: '
                               f'{err}); it may be damaged. Use another copy.')
    return None


# ----------------------------------------------------------------------------- reading
def load_checkpoint(filename: str, map_location: Union[str, torch.device] = 'cpu') -> Any:
    """Read a checkpoint (file, ``torchvision://``, ``open-mmlab://``, URL) with mmengine's
    :class:`~mmengine.runner.CheckpointLoader`, keeping torch's weights-only loading.

    Raises:
        FileNotFoundError: naming the file.
        CheckpointError: the file is truncated, corrupt, not a checkpoint, or needs unsafe
            unpickling; the message names it and says what to do.
    """
    if '://' not in str(filename) and not osp.isfile(osp.expanduser(str(filename))):
        raise FileNotFoundError(f'Checkpoint {filename!r} does not exist.')
    try:
        return CheckpointLoader.load_checkpoint(str(filename), map_location=map_location)
    except CheckpointError:
        raise
    except Exception as err:
        explained = explain_load_error(str(filename), err)
        if explained is None and isinstance(err, pickle.UnpicklingError):
            explained = CheckpointError(f'cannot load checkpoint {filename!r} with '
                                        f'weights-only loading: {err}')
        if explained is None:
            raise
        raise explained from err


_LOCAL_LOADER_WRAPPED = '_vtseg_checked'


def register_checked_loader() -> None:
    """Register a loader for local paths whose errors name the file (see
    :func:`explain_load_error`) in mmengine's ``CheckpointLoader``; idempotent.

    Errors that are not about the file (out of memory, ...) pass through unchanged.
    """
    current = CheckpointLoader._schemes.get('')
    if current is None or getattr(current, _LOCAL_LOADER_WRAPPED, False):
        return

    def load_from_local_checked(filename, map_location):
        try:
            return current(filename, map_location)
        except Exception as err:
            explained = explain_load_error(filename, err)
            if explained is None:
                raise
            raise explained from err

    setattr(load_from_local_checked, _LOCAL_LOADER_WRAPPED, True)
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_checked, force=True)
