"""Inference latency, throughput and peak memory of FPN vs VT-FPN, measured side by side.

Every configuration (neck alone, or the whole R-50 / R-101 segmentor, at one input size)
is timed for both necks in the same process with their repeats interleaved (FPN, VT-FPN,
VT-FPN, FPN, ...) so that load from other processes hits both alike: on a shared machine
the absolute times are noisy, the ratios are what the benchmark is for.

* Latency: ``warmup`` untimed calls, then ``repeats`` timed ones (``torch.no_grad``,
  CUDA synchronised around each call); median, quartiles, min and max. The clock is the
  wall clock, or (``clock='cpu'``, single-threaded CPU runs only) the process's CPU time,
  which leaves out the time the scheduler gives the core to other processes.
* Throughput: images/s of the same calls at a batch size > 1.
* Peak memory of one forward, on top of what is allocated before it (weights, inputs),
  two ways. *Tensors*: the peak of the bytes held by PyTorch's allocator during the call,
  on CUDA ``torch.cuda.max_memory_allocated`` minus the allocated bytes before, on CPU the
  running sum of the allocations and frees that ``torch.profiler`` records
  (``profile_memory=True``); exact and repeatable. *RSS* (CPU, Linux): the peak resident
  set size (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the resident size
  before the call, after returning freed heap memory to the OS (glibc ``malloc_trim``) so
  that an earlier model's memory is not counted; it also sees memory outside PyTorch's
  allocator (oneDNN/MKL work space) and the C allocator's behaviour, and varies by about
  +-15% from call to call.
* MACs from :func:`vtseg.analysis.flops.model_complexity`, achieved GMAC/s, and the same
  as a fraction of the machine's fp32 matmul rate, measured in the same run.

Models come from the project's configs (``configs/{fpn,vtfpn}_r{50,101}_{dataset}.py``),
built by :func:`vtseg.analysis.config_model.build_model_from_config` without pretrained
weights; the neck-only rows use the ``model.neck`` of the R-50 config, fed random feature
maps of the backbone's output shapes.
"""
from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from mmengine.model import revert_sync_batchnorm
from torch import Tensor, nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from .config_model import build_model_from_config, disable_pretrained, load_config
from .flops import model_complexity

__all__ = [
    'NECKS', 'MODES', 'PAPER_SIZES', 'BenchmarkSettings', 'Measurement', 'parse_size',
    'default_dataset', 'matmul_rate', 'peak_memory', 'interleaved_times', 'run_benchmark',
    'format_table', 'paired_speedup', 'scaling_exponents', 'plot_latency', 'machine_info',
    'save_results',
]

#: Necks compared, by the prefix of their config files.
NECKS = {'FPN': 'fpn', 'VT-FPN': 'vtfpn'}
#: What is timed: the neck alone, or the whole segmentor on a ResNet of that depth.
MODES = {'neck': 50, 'r50': 50, 'r101': 101}
#: Clocks: wall time, or the process's CPU time (user + system, all threads).
CLOCKS = {'wall': time.perf_counter, 'cpu': time.process_time}
#: Input sizes of the paper (LIP 473x473, COCO-Stuff 800x1216) and two common ones.
PAPER_SIZES = ((473, 473), (512, 512), (800, 1216), (1024, 2048))


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
    """What to measure. Sizes are (H, W); modes are keys of :data:`MODES`."""

    sizes: Sequence[Tuple[int, int]] = PAPER_SIZES
    modes: Sequence[str] = ('neck', 'r50')  # add 'r101' for the full table (twice as long)
    warmup: int = 1
    repeats: int = 3
    batch: int = 4                      # batch of the throughput rows
    throughput_sizes: Sequence[Tuple[int, int]] = ((512, 512),)
    device: str = 'cpu'
    threads: Optional[int] = None       # torch.set_num_threads; None keeps torch's default
    dataset: Optional[str] = None       # None: default_dataset(size)
    config_dir: str = 'configs'
    memory: bool = True
    matmul_size: int = 2048
    clock: str = 'wall'                 # 'wall' or 'cpu' (process CPU time, 1 thread)

    def check(self) -> None:
        for name, low in [('warmup', 0), ('repeats', 1), ('batch', 1), ('matmul_size', 1)]:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f'{name} must be an integer >= {low}, got {value!r}')
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f'threads must be a positive integer, got {self.threads!r}')
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f'modes {list(self.modes)!r}: choose among {list(MODES)}')
        if not self.sizes:
            raise ValueError('sizes is empty: give at least one HEIGHTxWIDTH size')
        if self.clock not in CLOCKS:
            raise ValueError(f'clock must be one of {list(CLOCKS)}, got {self.clock!r}')
        if self.clock == 'cpu' and (self.device != 'cpu' or self.threads != 1):
            raise ValueError("clock='cpu' (process CPU time) measures single-threaded CPU "
                             'runs only: use --device cpu --threads 1, or --clock wall')
        if self.device.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'device {self.device!r} requested but CUDA is not available; '
                             'use --device cpu')


@dataclass
class Measurement:
    """One neck in one configuration."""

    mode: str                    # 'neck', 'r50' or 'r101'
    neck: str                    # 'FPN' or 'VT-FPN'
    size: Tuple[int, int]
    batch: int
    config: str
    times_s: List[float]
    macs: Optional[int] = None   # per image
    peak_memory_bytes: Optional[int] = None    # tensors (allocator peak)
    peak_rss_bytes: Optional[int] = None       # CPU resident set size
    stats: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = sorted(self.times_s)
        q = statistics.quantiles(t, n=4, method='inclusive') if len(t) > 1 else [t[0]] * 3
        self.stats = dict(median=statistics.median(t), q1=q[0], q3=q[2], min=t[0], max=t[-1])

    @property
    def median(self) -> float:
        return self.stats['median']

    @property
    def images_per_s(self) -> float:
        return self.batch / self.median

    @property
    def gmacs_per_s(self) -> Optional[float]:
        return None if self.macs is None else self.macs * self.batch / self.median / 1e9


# ---------------------------------------------------------------------------- measuring
def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def matmul_rate(device: str = 'cpu', size: int = 2048, repeats: int = 5,
                clock: str = 'wall') -> float:
    """Best fp32 GMAC/s of a ``size x size`` square matmul: the machine's practical peak."""
    now = CLOCKS[clock]
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = math.inf
    with torch.no_grad():
        torch.matmul(a, b)
        for _ in range(repeats):
            _sync(device)
            start = now()
            torch.matmul(a, b)
            _sync(device)
            best = min(best, now() - start)
    return size ** 3 / best / 1e9


def interleaved_times(fns: Dict[str, Callable[[], object]], *, warmup: int, repeats: int,
                      device: str, clock: str = 'wall') -> Dict[str, List[float]]:
    """Time each callable ``repeats`` times, alternating their order every round.

    Round r runs the callables in the given order when r is even and reversed when odd
    (A B, B A, A B, ...), so slow phases of a shared machine fall on all of them alike.
    """
    names, now = list(fns), CLOCKS[clock]
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            _sync(device)
            start = now()
            fns[name]()
            _sync(device)
            times[name].append(now() - start)
    return times


def _proc_status_kib(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise KeyError(key)


def _release_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: freed memory may stay resident and hide part of the peak


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
    _release_freed_memory()
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


# ------------------------------------------------------------------------------ models
def config_path(config_dir: str, neck: str, depth: int, dataset: str) -> Path:
    """``{config_dir}/{fpn|vtfpn}_r{depth}_{dataset}.py``; raises if it does not exist."""
    path = Path(config_dir) / f'{NECKS[neck]}_r{depth}_{dataset}.py'
    if not path.is_file():
        raise FileNotFoundError(f'config {str(path)!r} not found: run from the repository '
                                'root or pass --config-dir, and --dataset with a config '
                                f'family that exists (e.g. coco-stuff164k or lip)')
    return path


def _build_neck(path: Path, device: str) -> nn.Module:
    from mmseg.registry import MODELS  # noqa: PLC0415  (imports mmseg.models lazily)
    cfg = load_config(path)
    disable_pretrained(cfg.model)
    return revert_sync_batchnorm(MODELS.build(cfg.model.neck)).to(device).eval()


def backbone_shapes(path: Path, size: Tuple[int, int]) -> List[Tuple[int, int, int]]:
    """(C, H, W) of each backbone output of ``path``'s model for an (H, W) image.

    The backbone runs on the meta device: shapes only, no memory, no arithmetic.
    """
    from mmseg.registry import MODELS  # noqa: PLC0415
    cfg = load_config(path)
    disable_pretrained(cfg.model)
    with torch.device('meta'):
        backbone = MODELS.build(cfg.model.backbone)
        backbone.eval()
        feats = backbone(torch.empty(1, 3, *size))
    return [tuple(f.shape[1:]) for f in feats]


class _NeckOnImage(nn.Module):
    """Runs ``neck`` on zero feature maps shaped like the backbone's, for FLOP counting."""

    def __init__(self, neck: nn.Module, shapes: Sequence[Tuple[int, int, int]]) -> None:
        super().__init__()
        self.neck = neck
        self.shapes = list(shapes)

    def forward(self, img: Tensor) -> Tuple[Tensor, ...]:
        return self.neck([img.new_zeros(img.shape[0], *s) for s in self.shapes])


def _forward_fn(model: nn.Module, inputs, is_neck: bool) -> Callable[[], object]:
    def run():
        with torch.no_grad():
            return model(inputs) if is_neck else model(inputs, mode='tensor')
    return run


# ------------------------------------------------------------------------------- runner
def run_benchmark(settings: BenchmarkSettings,
                  log: Callable[[str], None] = print) -> Dict[str, object]:
    """Measure every (mode, size) of ``settings`` for both necks; returns a results dict.

    The dict holds ``machine`` (see :func:`machine_info`), ``settings``, ``matmul_gmacs``
    (fp32 GMAC/s before and after the run) and ``measurements`` (list of
    :class:`Measurement` as dicts: latency rows at batch 1, throughput rows at
    ``settings.batch``).
    """
    settings.check()
    # Resolve every config first, so that a missing one fails before minutes of timing.
    jobs = [(s, 1) for s in settings.sizes]
    jobs += [(s, settings.batch) for s in settings.throughput_sizes if settings.batch > 1]
    plan = []
    for mode in settings.modes:
        for size, batch in jobs:
            dataset = settings.dataset or default_dataset(size)
            paths = {n: config_path(settings.config_dir, n, MODES[mode], dataset)
                     for n in NECKS}
            plan.append((mode, tuple(size), batch, paths))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = settings.device
    torch.manual_seed(0)
    load_before = _load_average()
    peak_before = matmul_rate(device, settings.matmul_size, clock=settings.clock)
    log(f'fp32 matmul {settings.matmul_size}^3: {peak_before:.1f} GMAC/s')
    rows: List[Measurement] = []
    macs_cache: Dict[Tuple[str, Tuple[int, int], str], int] = {}
    for mode, size, batch, paths in plan:
        rows += _measure_config(mode, size, batch, paths, settings, macs_cache, log)
    peak_after = matmul_rate(device, settings.matmul_size, clock=settings.clock)
    log(f'fp32 matmul {settings.matmul_size}^3 after the run: {peak_after:.1f} GMAC/s')
    return dict(machine=machine_info(device), settings=_jsonable(asdict(settings)),
                matmul_gmacs=dict(before=peak_before, after=peak_after,
                                  peak=max(peak_before, peak_after)),
                load_average=dict(before=load_before, after=_load_average()),
                measurements=[_jsonable(asdict(r)) for r in rows])


def _measure_config(mode: str, size: Tuple[int, int], batch: int, paths: Dict[str, Path],
                    settings: BenchmarkSettings,
                    macs_cache: Dict[Tuple[str, Tuple[int, int], str], int],
                    log: Callable[[str], None]) -> List[Measurement]:
    device, is_neck = settings.device, mode == 'neck'
    log(f'[{mode} {size[0]}x{size[1]} batch {batch}] building '
        + ', '.join(str(p) for p in paths.values()))
    if is_neck:
        shapes = backbone_shapes(paths['FPN'], size)
        models = {n: _build_neck(p, device) for n, p in paths.items()}
        inputs = [torch.randn(batch, *s, device=device) for s in shapes]
    else:
        models = {n: build_model_from_config(p, device=device)[0] for n, p in paths.items()}
        inputs = torch.randn(batch, 3, *size, device=device)
    for name, model in models.items():  # MACs of one image, counted once per size
        if (mode, size, name) not in macs_cache:
            probe = _NeckOnImage(model, shapes) if is_neck else model
            # model_complexity restores the probe's training flag afterwards: eval mode here
            # (a new module is in training mode, which would put BN in training mode).
            probe.eval()
            part = 'neck' if is_neck else ''
            macs_cache[mode, size, name] = model_complexity(
                probe, size, parts=(part,) if part else ()).flops[part]
    for model in models.values():
        model.eval()
    fns = {n: _forward_fn(m, inputs, is_neck) for n, m in models.items()}
    times = interleaved_times(fns, warmup=settings.warmup, repeats=settings.repeats,
                              device=device, clock=settings.clock)
    out = []
    for name in models:
        mem = peak_memory(fns[name], device) if settings.memory else {}
        row = Measurement(mode, name, tuple(size), batch, str(paths[name]), times[name],
                          macs_cache[mode, size, name], mem.get('tensors'), mem.get('rss'))
        out.append(row)
        log(f'  {name:<7} median {row.median * 1e3:9.1f} ms  '
            f'[{row.stats["q1"] * 1e3:.1f}, {row.stats["q3"] * 1e3:.1f}]'
            + ''.join(f'  {k} {v / 2 ** 20:.1f} MiB' for k, v in mem.items() if v is not None))
    del models, inputs, fns
    _release_freed_memory()
    return out


# ------------------------------------------------------------------------------ reports
def machine_info(device: str = 'cpu') -> Dict[str, object]:
    """CPU model, cores, torch version and threads; the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    info = dict(cpu=cpu, logical_cores=os.cpu_count(), torch=torch.__version__,
                threads=torch.get_num_threads(), python=platform.python_version(),
                device=device, mkldnn=torch.backends.mkldnn.is_available())
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
    return info


def _load_average() -> Optional[float]:
    """1-minute load average: how busy the machine was with other work (None if unknown)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _rows(results: Dict[str, object]) -> Dict[Tuple[str, Tuple[int, int], int], Dict]:
    """Measurements keyed by (mode, size, batch), each a dict neck name -> measurement."""
    table: Dict[Tuple[str, Tuple[int, int], int], Dict] = {}
    for m in results['measurements']:
        key = (m['mode'], tuple(m['size']), m['batch'])
        table.setdefault(key, {})[m['neck']] = m
    return table


def paired_speedup(fpn_times: Sequence[float], vt_times: Sequence[float]) -> float:
    """Median over rounds of FPN time / VT-FPN time, each pair timed back to back.

    :func:`interleaved_times` runs the two necks next to each other in every round, so a
    round's ratio sees the same machine load in both terms: on a shared machine this is
    steadier than the ratio of the two medians.
    """
    return statistics.median(f / v for f, v in zip(fpn_times, vt_times))


def format_table(results: Dict[str, object]) -> str:
    """Markdown table: latency (median [IQR]), speed-up, memory, MACs, GMAC/s, % of peak."""
    peak = results['matmul_gmacs']['peak']
    ms = 'CPU ms' if results['settings'].get('clock') == 'cpu' else 'ms'
    head = (f'| model | input | batch | FPN {ms} | VT-FPN {ms} | speed-up | FPN MiB '
            '| VT-FPN MiB | FPN GMACs | VT-FPN GMACs | FPN GMAC/s (% peak) '
            '| VT-FPN GMAC/s (% peak) |')
    # memory cells: 'tensors / RSS' MiB
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    label = {'neck': 'neck', 'r50': 'R-50', 'r101': 'R-101'}
    for (mode, size, batch), pair in _rows(results).items():
        fpn, vt = pair['FPN'], pair['VT-FPN']
        cells = [label[mode], f'{size[0]}x{size[1]}', str(batch)]
        for m in (fpn, vt):
            s = m['stats']
            cells.append(f'{s["median"] * 1e3:.1f} [{s["q1"] * 1e3:.0f}-{s["q3"] * 1e3:.0f}]'
                         if batch == 1 else
                         f'{s["median"] * 1e3:.1f} ({batch / s["median"]:.2f} img/s)')
        cells.append(f'{paired_speedup(fpn["times_s"], vt["times_s"]):.2f}x')
        for m in (fpn, vt):
            cells.append(' / '.join('n/a' if m[k] is None else f'{m[k] / 2 ** 20:.0f}'
                                    for k in ('peak_memory_bytes', 'peak_rss_bytes')))
        for m in (fpn, vt):
            cells.append('-' if m['macs'] is None else f'{m["macs"] / 1e9:.1f}')
        for m in (fpn, vt):
            if m['macs'] is None:
                cells.append('-')
            else:
                rate = m['macs'] * batch / m['stats']['median'] / 1e9
                cells.append(f'{rate:.1f} ({100 * rate / peak:.0f}%)')
        lines.append('| ' + ' | '.join(cells) + ' |')
    info = results['machine']
    lines.append('')
    lines.append(f'fp32 matmul peak {peak:.1f} GMAC/s ({results["settings"]["matmul_size"]}^3, '
                 f'best of before/after: {results["matmul_gmacs"]["before"]:.1f} / '
                 f'{results["matmul_gmacs"]["after"]:.1f}); {info["cpu"]}, '
                 f'{info["logical_cores"]} logical cores, {info["threads"]} '
                 f'thread{"s" if info["threads"] != 1 else ""}, '
                 f'torch {info["torch"]}, device {info["device"]}.')
    load = results.get('load_average', {})
    if load.get('before') is not None:
        lines.append(f'1-minute load average before / after the run: {load["before"]:.2f} / '
                     f'{load["after"]:.2f} (other processes share the machine: compare '
                     'the interleaved FPN and VT-FPN columns, not runs).')
    if ms == 'CPU ms':
        lines.append('Clock: process CPU time of the single-threaded forward (user + system, '
                     'page faults included), which leaves out the time other processes '
                     'held the core; the matmul peak is measured the same way.')
    lines.append('Latency: median [interquartile range] of the timed repeats, ms (batch > 1: '
                 'per batch, and images/s). Speed-up: median over rounds of the FPN / VT-FPN '
                 'time ratio, the two timed back to back. Memory: peak extra memory of one '
                 'forward, MiB, tensors / resident set size. MACs per image; GMAC/s and % '
                 'of the fp32 matmul peak.')
    slopes = scaling_exponents(results)
    if slopes:
        lines.append('Latency ~ pixels^k (least squares over the batch-1 sizes): ' + ', '.join(
            f'{label[mode]} {neck} k={k:.2f}' for (mode, neck), k in slopes.items()))
    return '\n'.join(lines)


def scaling_exponents(results: Dict[str, object]) -> Dict[Tuple[str, str], float]:
    """Slope of log(latency) vs log(pixels) per (mode, neck), over the batch-1 rows."""
    points: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    for m in results['measurements']:
        if m['batch'] == 1:
            points.setdefault((m['mode'], m['neck']), []).append(
                (math.log(m['size'][0] * m['size'][1]), math.log(m['stats']['median'])))
    slopes = {}
    for key, pts in points.items():
        xs = [p[0] for p in pts]
        if len(set(xs)) < 2:
            continue
        mx, my = statistics.fmean(xs), statistics.fmean(p[1] for p in pts)
        slopes[key] = (sum((x - mx) * (y - my) for x, y in pts)
                       / sum((x - mx) ** 2 for x in xs))
    return slopes


def plot_latency(results: Dict[str, object], path: Path) -> Path:
    """Latency vs pixel count (log-log), FPN and VT-FPN per mode, IQR as error bars."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 5))
    styles = {'FPN': dict(color='tab:blue'), 'VT-FPN': dict(color='tab:red')}
    markers = {'neck': 'o', 'r50': 's', 'r101': '^'}
    lines = {'neck': ':', 'r50': '--', 'r101': '-'}
    label = {'neck': 'neck only', 'r50': 'R-50 model', 'r101': 'R-101 model'}
    series: Dict[Tuple[str, str], List[Dict]] = {}
    for m in results['measurements']:
        if m['batch'] == 1:
            series.setdefault((m['mode'], m['neck']), []).append(m)
    for (mode, neck), ms in series.items():
        ms = sorted(ms, key=lambda m: m['size'][0] * m['size'][1])
        px = [m['size'][0] * m['size'][1] for m in ms]
        med = [m['stats']['median'] * 1e3 for m in ms]
        err = [[(m['stats']['median'] - m['stats']['q1']) * 1e3 for m in ms],
               [(m['stats']['q3'] - m['stats']['median']) * 1e3 for m in ms]]
        ax.errorbar(px, med, yerr=err, marker=markers[mode], linestyle=lines[mode],
                    capsize=3, label=f'{neck}, {label[mode]}', **styles[neck])
    if series:  # a slope-1 guide: time proportional to pixels, through the first point
        first = min((m for ms in series.values() for m in ms),
                    key=lambda m: (m['size'][0] * m['size'][1], m['stats']['median']))
        px0, t0 = first['size'][0] * first['size'][1], first['stats']['median'] * 1e3
        xs = sorted({m['size'][0] * m['size'][1] for ms in series.values() for m in ms})
        ax.plot(xs, [t0 * x / px0 for x in xs], color='0.6', linewidth=0.8,
                label='proportional to pixels')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('input pixels (H x W)')
    clock = 'CPU time' if results['settings'].get('clock') == 'cpu' else 'latency'
    ax.set_ylabel(f'{clock}, batch 1 (ms)')
    info = results['machine']
    threads = f'{info["threads"]} thread' + ('s' if info['threads'] != 1 else '')
    ax.set_title(f'FPN vs VT-FPN inference, {info["device"]}, {threads}')
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save_results(results: Dict[str, object], out_dir: Path) -> Dict[str, Path]:
    """Write ``benchmark.json``, ``benchmark.md`` (the table) and ``benchmark_latency.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = dict(json=out_dir / 'benchmark.json', table=out_dir / 'benchmark.md',
                 plot=out_dir / 'benchmark_latency.png')
    paths['json'].write_text(json.dumps(results, indent=1))
    paths['table'].write_text(format_table(results) + '\n')
    plot_latency(results, paths['plot'])
    return paths
