"""Run the benchmark: every configuration for both necks, in every form, side by side.

Every configuration (neck alone, or the whole R-50 / R-101 segmentor, at one input size)
is timed for both necks and all their forms in the same process, with the repeats
interleaved (each round runs every (neck, form) once, form by form with the two necks
next to each other, the order reversed every other round) so that load from other
processes hits all of them alike: on a shared machine the absolute times are noisy, the
ratios are what the benchmark is for. VT-FPN's floor, its lateral convs alone, is timed in
the same rounds, next to the necks.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ...engine.host_memory import reuse_host_memory
from ..config_model import build_model_from_config
from ..flops import flop_analyzer
from .forms import FORMS, TRAIN_FORMS, make_runner, prepare
from .memory import peak_memory, release_freed_memory
from .models import Laterals, NeckOnImage, backbone_shapes, config_path
from .report import load_average, machine_info
from .settings import HOST_MEMORY, MODES, NECKS, BenchmarkSettings, default_dataset
from .stages import stage_modules, stage_times
from .timing import interleaved_times, matmul_rate
from .train_step import make_train_step

__all__ = ['Measurement', 'run_benchmark']

#: The name VT-FPN's lateral convs alone (its floor) are timed under, next to the necks.
FLOOR = 'VT-FPN laterals'


@dataclass
class Measurement:
    """One neck in one form and one configuration."""

    kind: str                    # 'inference', 'train', 'floor' (the lateral convs alone)
    #                              or 'stage' (one stage of VT-FPN, timed in place)
    mode: str                    # 'neck', 'r50' or 'r101'
    neck: str                    # 'FPN' or 'VT-FPN'
    form: str                    # a key of FORMS (inference) or TRAIN_FORMS (train)
    size: Tuple[int, int]
    batch: int
    config: str
    times_s: List[float]
    macs: Optional[int] = None   # per image, forward
    lateral_macs: Optional[int] = None  # per image, the neck's lateral 1x1 convs
    peak_memory_bytes: Optional[int] = None    # tensors (allocator peak)
    peak_rss_bytes: Optional[int] = None       # CPU resident set size
    stage: Optional[str] = None  # kind 'stage': which (see .stages.STAGES), or 'total'
    stats: Dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = sorted(self.times_s)
        q = statistics.quantiles(t, n=4, method='inclusive') if len(t) > 1 else [t[0]] * 3
        self.stats = dict(median=statistics.median(t), q1=q[0], q3=q[2], min=t[0], max=t[-1])


def run_benchmark(settings: BenchmarkSettings,
                  log: Callable[[str], None] = print) -> Dict[str, object]:
    """Measure every (mode, size) of ``settings`` for both necks in every form, then the
    training steps; returns a results dict.

    The dict holds ``machine`` (see :func:`~.report.machine_info`), ``settings``,
    ``matmul_gmacs`` (fp32 GMAC/s before and after the run), ``load_average`` and
    ``measurements`` (list of :class:`Measurement` as dicts).
    """
    settings.check()
    # Resolve every config first, so that a missing one fails before minutes of timing.
    jobs = [(s, 1) for s in settings.sizes]
    jobs += [(s, settings.batch) for s in settings.throughput_sizes if settings.batch > 1]
    plan = []
    for mode in settings.modes:
        for size, batch in jobs:
            plan.append(('inference', mode, tuple(size), batch,
                         _paths(settings, MODES[mode], size)))
    for size in settings.train_sizes:
        plan.append(('train', 'r50', tuple(size), settings.train_batch,
                     _paths(settings, 50, size)))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = settings.device
    # One process-wide allocator setting for every model and form.
    reused = reuse_host_memory(HOST_MEMORY[settings.host_memory])
    torch.manual_seed(0)
    load_before = load_average()
    peak_before = matmul_rate(device, settings.matmul_size, clock=settings.clock)
    log(f'fp32 matmul {settings.matmul_size}^3: {peak_before:.1f} GMAC/s')
    rows: List[Measurement] = []
    for kind, mode, size, batch, paths in plan:
        measure = _measure_inference if kind == 'inference' else _measure_training
        rows += measure(mode, size, batch, paths, settings, log)
    peak_after = matmul_rate(device, settings.matmul_size, clock=settings.clock)
    log(f'fp32 matmul {settings.matmul_size}^3 after the run: {peak_after:.1f} GMAC/s')
    machine = dict(machine_info(device), host_memory_reused=reused)
    return dict(machine=machine, settings=_jsonable(asdict(settings)),
                matmul_gmacs=dict(before=peak_before, after=peak_after,
                                  peak=max(peak_before, peak_after)),
                load_average=dict(before=load_before, after=load_average()),
                measurements=[_jsonable(asdict(r)) for r in rows])


def _paths(settings: BenchmarkSettings, depth: int, size) -> Dict[str, Path]:
    dataset = settings.dataset or default_dataset(tuple(size))
    return {n: config_path(settings.config_dir, n, depth, dataset) for n in NECKS}


def _costs(model: torch.nn.Module, size: Tuple[int, int], is_neck: bool,
           shapes) -> Tuple[int, Optional[int], Dict[str, int]]:
    """(MACs, MACs of the lateral 1x1 convolutions, MACs by module name) of one image, on
    the model as built; the lateral convolutions are the neck's own ``lateral_convs``."""
    probe = NeckOnImage(model, shapes) if is_neck else model
    device = next(model.parameters()).device
    by_module = flop_analyzer(probe.eval(), torch.zeros(1, 3, *size, device=device)).by_module()
    names = {id(m): n for n, m in probe.named_modules()}
    neck = model if is_neck else getattr(model, 'neck', None)
    convs = [getattr(m, 'conv', m) for m in getattr(neck, 'lateral_convs', ())]
    lateral = sum(by_module.get(names[id(c)], 0) for c in convs)
    return int(by_module['neck' if is_neck else '']), int(lateral), dict(by_module)


def _measure_inference(mode: str, size: Tuple[int, int], batch: int, paths: Dict[str, Path],
                       settings: BenchmarkSettings,
                       log: Callable[[str], None]) -> List[Measurement]:
    device, is_neck = settings.device, mode == 'neck'
    log(f'[{mode} {size[0]}x{size[1]} batch {batch}] building '
        + ', '.join(str(p) for p in paths.values()))
    shapes = backbone_shapes(paths['FPN'], size) if is_neck else None
    models = {n: build_model_from_config(p, part='neck' if is_neck else None,
                                         device=device)[0] for n, p in paths.items()}
    if is_neck:
        inputs = [torch.randn(batch, *s, device=device) for s in shapes]
    else:
        inputs = torch.randn(batch, 3, *size, device=device)
    costs = {n: _costs(m, size, is_neck, shapes) for n, m in models.items()}
    fns = {}
    for name, model in models.items():
        for form in settings.forms:
            fns[name, form] = make_runner(FORMS[form], model, inputs, is_neck=is_neck,
                                          log=log, label=f'{name} ')
    if is_neck:  # VT-FPN's floor, timed in the same rounds as the necks
        laterals = Laterals(models['VT-FPN'])
        for form in settings.forms:
            if FORMS[form].prepare is not None:  # PyTorch forms
                fns[FLOOR, form] = make_runner(FORMS[form], laterals, inputs, is_neck=True,
                                               log=log, label='laterals ')
    times = interleaved_times(_side_by_side(fns), warmup=settings.warmup,
                              repeats=settings.repeats, device=device, clock=settings.clock)
    out = []
    for (name, form), fn in fns.items():
        if name == FLOOR:
            row = Measurement('floor', mode, 'VT-FPN', form, tuple(size), batch,
                              str(paths['VT-FPN']), times[name, form], costs['VT-FPN'][1],
                              costs['VT-FPN'][1])
            out.append(row)
            log(f'  laterals {form:<18} median {row.stats["median"] * 1e3:9.1f} ms')
            continue
        mem = peak_memory(fn, device) if settings.memory else {}
        if form == 'onnxruntime':  # outside PyTorch's allocator: resident memory only
            mem['tensors'] = None
        row = Measurement('inference', mode, name, form, tuple(size), batch,
                          str(paths[name]), times[name, form], costs[name][0],
                          costs[name][1], mem.get('tensors'), mem.get('rss'))
        out.append(row)
        _log_row(log, row, mem)
    if is_neck:
        out += _measure_stages(models['VT-FPN'], size, batch, paths['VT-FPN'], inputs,
                               costs['VT-FPN'][2], settings, log)
    del models, inputs, fns
    release_freed_memory()
    return out


def _measure_stages(neck: torch.nn.Module, size: Tuple[int, int], batch: int, path: Path,
                    inputs, by_module: Dict[str, int], settings: BenchmarkSettings,
                    log: Callable[[str], None]) -> List[Measurement]:
    """Time VT-FPN's stages in place (:mod:`.stages`) in its fastest eager form the run
    has (``optimized``, else ``channels_last``, else ``eager``), with the MACs of each
    stage."""
    torch_forms = [f for f in ('optimized', 'channels_last', 'eager') if f in settings.forms]
    if not torch_forms:
        return []
    form = FORMS[torch_forms[0]]
    times = stage_times(*prepare(form, neck, inputs), warmup=settings.warmup,
                        repeats=settings.repeats, device=settings.device, clock=settings.clock)
    names = {id(m): f'neck.{n}' for n, m in neck.named_modules()}
    macs = {stage: sum(by_module.get(names[id(m)], 0) for m in modules)
            for stage, modules in stage_modules(neck).items()}
    macs['total'] = by_module.get('neck')
    out = []
    for stage, ts in times.items():
        row = Measurement('stage', 'neck', 'VT-FPN', form.name, tuple(size), batch, str(path),
                          ts, macs.get(stage), stage=stage)
        out.append(row)
        log(f'  VT-FPN stage {stage:<14} median {row.stats["median"] * 1e3:9.1f} ms')
    return out


def _measure_training(mode: str, size: Tuple[int, int], batch: int, paths: Dict[str, Path],
                      settings: BenchmarkSettings,
                      log: Callable[[str], None]) -> List[Measurement]:
    device = settings.device
    log(f'[train {mode} {size[0]}x{size[1]} batch {batch}] building '
        + ', '.join(str(p) for p in paths.values()))
    fns, macs = {}, {}
    for name, path in paths.items():
        model = build_model_from_config(path, device=device)[0]
        macs[name] = _costs(model, size, False, None)
        for form in settings.train_forms:
            start = time.perf_counter()
            fns[name, form] = make_train_step(TRAIN_FORMS[form], model, size, batch,
                                              device=device)
            if TRAIN_FORMS[form].compiled:
                log(f'  {name} {form}: compiled in {time.perf_counter() - start:.1f} s')
    times = interleaved_times(_side_by_side(fns), warmup=settings.warmup,
                              repeats=settings.repeats, device=device, clock=settings.clock)
    out = []
    for name, form in fns:
        row = Measurement('train', mode, name, form, tuple(size), batch, str(paths[name]),
                          times[name, form], macs[name][0], macs[name][1])
        out.append(row)
        _log_row(log, row, {})
    del fns
    release_freed_memory()
    return out


def _side_by_side(fns: Dict[Tuple[str, str], Callable]) -> Dict[Tuple[str, str], Callable]:
    """The (neck, form) callables in the order a round runs them: form by form, both
    necks next to each other, then VT-FPN's lateral convs alone (FPN eager, VT-FPN eager,
    laterals eager, FPN channels_last, ...), so that the times a ratio is taken of were
    measured seconds apart, not a whole half-round."""
    forms = list(dict.fromkeys(form for _, form in fns))
    return {(name, form): fns[name, form] for form in forms for name in (*NECKS, FLOOR)
            if (name, form) in fns}


def _log_row(log: Callable[[str], None], row: Measurement, mem: Dict) -> None:
    log(f'  {row.neck:<7} {row.form:<18} median {row.stats["median"] * 1e3:9.1f} ms  '
        f'[{row.stats["q1"] * 1e3:.1f}, {row.stats["q3"] * 1e3:.1f}]'
        + ''.join(f'  {k} {v / 2 ** 20:.1f} MiB' for k, v in mem.items() if v is not None))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
