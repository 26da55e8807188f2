"""Clocks, the machine's matmul rate, and interleaved timing of several callables."""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List

import torch

__all__ = ['CLOCKS', 'sync', 'matmul_rate', 'interleaved_times']

#: Clocks: wall time, or the process's CPU time (user + system, all threads).
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}


def sync(device: str) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def matmul_rate(device: str = 'cpu', size: int = 2048, repeats: int = 5,
                clock: str = 'wall') -> float:
    """Best fp32 GMAC/s of a ``size x size`` square ``torch.matmul`` (the BLAS library's
    rate; convolutions run through oneDNN and can go faster, e.g. MKL on AMD CPUs)."""
    now = CLOCKS[clock]
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = math.inf
    with torch.no_grad():
        torch.matmul(a, b)
        for _ in range(repeats):
            sync(device)
            start = now()
            torch.matmul(a, b)
            sync(device)
            best = min(best, now() - start)
    return size ** 3 / best / 1e9


def interleaved_times(fns: Dict[str, Callable[[], object]], *, warmup: int, repeats: int,
                      device: str, clock: str = 'wall') -> Dict[str, List[float]]:
    """Time each callable ``repeats`` times, alternating their order every round.

    Round r runs the callables in the given order when r is even and reversed when odd
    (A B, B A, A B, ...), so slow phases of a shared machine fall on all of them alike,
    and the i-th times of two callables were taken next to each other.
    """
    names, now = list(fns), CLOCKS[clock]
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync(device)
            start = now()
            fns[name]()
            sync(device)
            times[name].append(now() - start)
    return times
