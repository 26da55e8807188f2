"""What the benchmark measures: models, sizes, forms, clocks."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .forms import FORMS, TRAIN_FORMS
from .timing import CLOCKS

__all__ = ['NECKS', 'MODES', 'HOST_MEMORY', 'CPU_ISA_ENV', 'PAPER_SIZES', 'BenchmarkSettings',
           'parse_size', 'default_dataset', 'cpu_isa_applied']

#: Necks compared, by the prefix of their config files.
NECKS = {'FPN': 'fpn', 'VT-FPN': 'vtfpn'}
#: What is timed: the neck alone, or the whole segmentor on a ResNet of that depth.
MODES = {'neck': 50, 'r50': 50, 'r101': 101}
#: Host memory: freed memory reused as the configs declare (``HostMemoryHook``), or the
#: C library's default (large blocks mapped afresh and returned on every free).
HOST_MEMORY = {'reuse': True, 'system': False}
#: The CPU instruction set both models run with. ``'avx2'`` runs them as on a CPU without
#: AVX-512: PyTorch's kernels and TorchInductor's generated code (``ATEN_CPU_CAPABILITY``),
#: oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``), MKL's GEMMs
#: (``MKL_ENABLE_INSTRUCTIONS``) and vtseg's kernels (which follow PyTorch's) use AVX2 at
#: most. Each library reads its variable when it starts: they are set before the process
#: imports torch (``tools/benchmark.py --cpu-isa`` starts itself anew with them).
CPU_ISA_ENV = {
    'native': {},
    'avx2': {'ATEN_CPU_CAPABILITY': 'avx2', 'ONEDNN_MAX_CPU_ISA': 'AVX2',
             'MKL_ENABLE_INSTRUCTIONS': 'AVX2'},
}
#: Input sizes of the paper: LIP 473x473 and COCO-Stuff 800x1216.
PAPER_SIZES = ((473, 473), (800, 1216))


def cpu_isa_applied(cpu_isa: str) -> bool:
    """Whether this process runs with ``CPU_ISA_ENV[cpu_isa]`` set."""
    return all(os.environ.get(k) == v for k, v in CPU_ISA_ENV[cpu_isa].items())


def parse_size(text: str) -> Tuple[int, int]:
    """``'800x1216'`` -> ``(800, 1216)`` (height x width)."""
    parts = text.lower().split('x')
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f'size {text!r} is not HEIGHTxWIDTH with positive integers, '
                         'e.g. 800x1216')
    return int(parts[0]), int(parts[1])


def default_dataset(size: Tuple[int, int]) -> str:
    """The config family of a size: LIP at its 473x473, COCO-Stuff 164k otherwise."""
    return 'lip' if tuple(size) == (473, 473) else 'coco-stuff164k'


@dataclass
class BenchmarkSettings:
    """What to measure. Sizes are (H, W); modes are keys of :data:`MODES`; forms are keys
    of :data:`~vtseg.analysis.benchmark.forms.FORMS`."""

    sizes: Sequence[Tuple[int, int]] = PAPER_SIZES
    modes: Sequence[str] = ('neck', 'r50')  # add 'r101' for the R-101 rows
    forms: Sequence[str] = tuple(FORMS)
    warmup: int = 1
    repeats: int = 3
    batch: int = 4                      # batch of the throughput rows
    throughput_sizes: Sequence[Tuple[int, int]] = ()
    train_sizes: Sequence[Tuple[int, int]] = ((473, 473),)  # R-50 training step rows
    train_batch: int = 2
    train_forms: Sequence[str] = tuple(TRAIN_FORMS)
    device: str = 'cpu'
    threads: Optional[int] = None       # torch.set_num_threads; None keeps torch's default
    dataset: Optional[str] = None       # None: default_dataset(size)
    config_dir: str = 'configs'
    memory: bool = True
    matmul_size: int = 2048
    clock: str = 'wall'                 # 'wall' or 'cpu' (process CPU time, 1 thread)
    host_memory: str = 'reuse'          # 'reuse' (as the configs declare) or 'system'
    cpu_isa: str = 'native'             # a key of CPU_ISA_ENV

    def check(self, *, environment: bool = True) -> None:
        """Raise ``ValueError`` naming the first bad setting; ``environment=False`` leaves
        out whether this process runs with ``CPU_ISA_ENV[cpu_isa]`` set."""
        for name, low in [('warmup', 0), ('repeats', 1), ('batch', 1), ('train_batch', 1),
                          ('matmul_size', 1)]:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f'threads must be a positive integer, got {self.threads!r}')
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not (self.modes or self.train_sizes):
            raise ValueError(f'modes {list(self.modes)!r}: choose among {list(MODES)}')
        for name, known in [('forms', FORMS), ('train_forms', TRAIN_FORMS)]:
            chosen = list(getattr(self, name))
            bad = [f for f in chosen if f not in known]
            if bad or (not chosen and (self.modes if name == 'forms' else self.train_sizes)):
                raise ValueError(f'{name} {chosen!r}: choose among {list(known)}')
        if not self.sizes and self.modes:
            raise ValueError('sizes is empty: give at least one HEIGHTxWIDTH size')
        if self.clock not in CLOCKS:
            raise ValueError(f'clock must be one of {list(CLOCKS)}, got {self.clock!r}')
        if self.clock == 'cpu' and (self.device != 'cpu' or self.threads != 1):
            raise ValueError("clock='cpu' (process CPU time) measures single-threaded CPU "
                             'runs only: use --device cpu --threads 1, or --clock wall')
        if self.host_memory not in HOST_MEMORY:
            raise ValueError(f'host_memory must be one of {list(HOST_MEMORY)}, got '
                             f'{self.host_memory!r}')
        if self.cpu_isa not in CPU_ISA_ENV:
            raise ValueError(f'cpu_isa must be one of {list(CPU_ISA_ENV)}, got '
                             f'{self.cpu_isa!r}')
        if self.cpu_isa != 'native':
            if self.device != 'cpu':
                raise ValueError(f'cpu_isa={self.cpu_isa!r} caps the CPU\'s instruction set: '
                                 'use --device cpu')
            if 'onnxruntime' in self.forms:
                raise ValueError('ONNX Runtime chooses its kernels from the CPU alone and '
                                 f'cannot be capped at {self.cpu_isa}: drop onnxruntime '
                                 'from forms (--forms)')
            if environment and not cpu_isa_applied(self.cpu_isa):
                env = ' '.join(f'{k}={v}' for k, v in CPU_ISA_ENV[self.cpu_isa].items())
                raise ValueError(f'cpu_isa={self.cpu_isa!r} needs {env} set before the '
                                 'process starts (tools/benchmark.py --cpu-isa does it)')
        if not self.device.startswith('cuda') and self.device != 'cpu':
            raise ValueError(f'device {self.device!r}: use cpu or cuda[:N]')
        if 'onnxruntime' in self.forms:
            if self.device != 'cpu':
                raise ValueError('the onnxruntime form runs on the CPU: drop it from forms '
                                 f'(--forms) with device {self.device!r}')
            try:
                import onnxruntime  # noqa: F401, PLC0415
            except ImportError:
                raise ValueError('the onnxruntime form needs onnxruntime: pip install -e '
                                 '".[deploy]", or drop it from forms (--forms)') from None
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'device {self.device!r} requested but CUDA is not available; '
                             'use --device cpu')
