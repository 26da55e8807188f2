"""Peak memory of one call: tensors held by PyTorch's allocator, and resident set size.

*Tensors*: on CUDA ``torch.cuda.max_memory_allocated`` minus the bytes allocated before;
on CPU the peak of the running sum of the allocations and frees that ``torch.profiler``
records (``profile_memory=True``); exact and repeatable. *RSS* (CPU, Linux): the peak
resident set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident
size before the call, after returning freed heap memory to the OS (glibc ``malloc_trim``)
so that an earlier model's memory is not counted; it also sees memory outside PyTorch's
allocator (oneDNN/MKL work space) and varies by about +-15% from call to call.
"""
from __future__ import annotations

import gc
from typing import Callable, Dict, Optional

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from ...engine.host_memory import return_freed_host_memory

__all__ = ['peak_memory', 'release_freed_memory']


def _proc_status_kib(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise KeyError(key)


def release_freed_memory() -> None:
    gc.collect()
    # Without glibc nothing is returned: freed memory may stay resident and hide part of
    # the next resident-set peak.
    return_freed_host_memory()


def _tensor_peak(prof) -> Optional[int]:
    """Peak of the running sum of the CPU allocations/frees a memory profile recorded."""
    try:
        events = [e for e in prof.profiler.kineto_results.events()
                  if e.name() == '[memory]' and e.device_type() == DeviceType.CPU]
    except AttributeError:  # a torch without kineto memory events
        return None
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def peak_memory(fn: Callable[[], object], device: str = 'cpu') -> Dict[str, Optional[int]]:
    """Bytes one call of ``fn`` needs on top of what is allocated before it.

    Returns ``{'tensors': ..., 'rss': ...}`` (see the module docstring); a value is
    ``None`` where it cannot be measured (``rss`` on CUDA or without Linux ``/proc``).
    """
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return dict(tensors=torch.cuda.max_memory_allocated() - before, rss=None)
    release_freed_memory()
    try:
        before = _proc_status_kib('VmRSS')
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # reset VmHWM (peak RSS) to the current RSS
    except (OSError, KeyError):
        before = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    rss = None if before is None else (_proc_status_kib('VmHWM') - before) * 1024
    return dict(tensors=_tensor_peak(prof), rss=rss)
