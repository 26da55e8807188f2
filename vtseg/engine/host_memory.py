"""Host memory reuse: freed CPU tensor memory serves the next allocation.

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block above
its mmap threshold (32 MiB at most) with a fresh ``mmap`` and unmaps it again on
``free``, so each new large feature map (one 256-channel map at stride 4 of an 800x1216
image is 62 MB) is zeroed and faulted in by the kernel page by page when it is first
written. A model that makes a few such maps per image spends a large share of its time
in page faults, on any CPU; the cost grows with the number of fresh full-size maps, not
with the arithmetic. (The CUDA caching allocator avoids the same cost on GPUs.)

:func:`reuse_host_memory` tells glibc (``mallopt``) to serve large blocks from its heap
and to keep freed memory there, so a map freed after one image is reused for the next.
It is a process-wide setting, model-agnostic (FPN and VT-FPN alike), and changes no
number a model computes; the price is that the process keeps its peak resident memory
instead of returning freed memory to the system. Where the C library is not glibc it does
nothing and says so. Apply it when a process starts: glibc serves a thread that it has
moved to a secondary arena (after contention on the main one) from heaps of at most 64
MiB, and a larger block requested there is still mapped afresh.

The configs declare it (``HostMemoryHook`` in ``configs/_base_/default_runtime.py``), so
mmseg's ``tools/train.py``, a plain ``Runner`` script and vtseg's tools all run with it;
:func:`vtseg.apis.init_model` follows the same declaration and ``tools/benchmark.py``
applies it to every model it times (``--host-memory system`` to measure without).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

__all__ = ['reuse_host_memory', 'host_memory_reused', 'return_freed_host_memory',
           'declared_host_memory', 'HostMemoryHook']

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# glibc's defaults, restored by reuse_host_memory(False).
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
# Freed memory above this much at the top of the heap would be returned to the system.
_KEEP_TRIM_THRESHOLD = 2 ** 31 - 1

_state = {'reused': False}


def _glibc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        getattr(libc, 'gnu_get_libc_version')  # glibc only  # noqa: B009
        getattr(libc, 'mallopt')  # noqa: B009
    except (OSError, AttributeError):
        return None
    return libc


def reuse_host_memory(enable: bool = True) -> bool:
    """Keep freed host memory for reuse (``enable=True``) or restore glibc's defaults and
    return the kept memory to the system (``enable=False``).

    Returns:
        Whether the setting is now in effect (``False`` where the C library is not glibc).
    """
    libc = _glibc()
    if libc is None:
        if enable:
            print_log('reuse_host_memory: the C library is not glibc; large tensors keep '
                      'the system allocator default', logger='current',
                      level=logging.WARNING)
        _state['reused'] = False
        return False
    mmap_max = 0 if enable else _DEFAULT_MMAP_MAX
    trim = _KEEP_TRIM_THRESHOLD if enable else _DEFAULT_TRIM_THRESHOLD
    ok = libc.mallopt(_M_MMAP_MAX, mmap_max) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, trim) == 1
    if not ok:
        raise RuntimeError('reuse_host_memory: glibc mallopt refused the setting '
                           f'(M_MMAP_MAX={mmap_max}, M_TRIM_THRESHOLD={trim})')
    if not enable:  # and give back what was kept, as glibc's default would have
        return_freed_host_memory()
    _state['reused'] = bool(enable)
    return bool(enable)


def return_freed_host_memory() -> bool:
    """Give the memory that freed tensors left in the heap back to the system now (glibc
    ``malloc_trim``), whatever the setting; ``False`` where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def host_memory_reused() -> bool:
    """Whether :func:`reuse_host_memory` is in effect in this process."""
    return _state['reused']


def declared_host_memory(cfg) -> Optional[bool]:
    """The ``reuse`` of the ``HostMemoryHook`` a config declares in ``custom_hooks``, or
    ``None`` when it declares none."""
    for hook in cfg.get('custom_hooks', None) or []:
        if isinstance(hook, dict) and hook.get('type') in ('HostMemoryHook',
                                                           HostMemoryHook):
            reuse = hook.get('reuse', True)
            if not isinstance(reuse, bool):
                raise ValueError(f'HostMemoryHook: reuse must be True or False, got {reuse!r}')
            return reuse
    return None


@HOOKS.register_module()
class HostMemoryHook(Hook):
    """Applies :func:`reuse_host_memory` when a run starts (training or testing).

    Args:
        reuse: keep freed host memory for reuse (``False`` restores glibc's defaults).
    """

    priority = 'VERY_HIGH'

    def __init__(self, reuse: bool = True) -> None:
        if not isinstance(reuse, bool):
            raise ValueError(f'HostMemoryHook: reuse must be True or False, got {reuse!r}')
        self.reuse = reuse

    def before_run(self, runner) -> None:
        if reuse_host_memory(self.reuse):
            runner.logger.info('HostMemoryHook: freed host memory is kept for reuse '
                               '(glibc mallopt)')
