"""Benchmark reports: machine description, best-against-best tables, plot, files."""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ...models.layers.token_pixel_kernels import kernels_isa, kernels_threaded
from .settings import CPU_ISA_ENV
from .stages import STAGES

__all__ = ['machine_info', 'load_average', 'paired_speedup', 'best_forms', 'floor_fractions',
           'format_table', 'scaling_exponents', 'plot_latency', 'save_results']

_LABEL = {'neck': 'neck', 'r50': 'R-50', 'r101': 'R-101'}


def machine_info(device: str = 'cpu') -> Dict[str, object]:
    """CPU model, cores, torch version and threads; the GPU's name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            lines = f.read().splitlines()
        cpu = next(line.split(':', 1)[1].strip() for line in lines
                   if line.startswith('model name'))
        flags = next((line.split(':', 1)[1].split() for line in lines
                      if line.startswith('flags')), [])
    except (OSError, StopIteration):
        flags = []
    isa = [f for f in ('avx512f', 'avx512_bf16', 'amx_tile', 'avx2') if f in flags]
    info = dict(cpu=cpu, cpu_isa=isa[0] if isa else 'unknown', logical_cores=os.cpu_count(),
                torch=torch.__version__, threads=torch.get_num_threads(),
                python=platform.python_version(), device=device,
                mkldnn=torch.backends.mkldnn.is_available(),
                torch_cpu_capability=torch.backends.cpu.get_cpu_capability(),
                vtseg_kernels=kernels_isa(), vtseg_kernels_threaded=kernels_threaded())
    if device.startswith('cuda'):
        info['gpu'] = torch.cuda.get_device_name(torch.device(device))
    return info


def load_average() -> Optional[float]:
    """1-minute load average: how busy the machine was with other work (None if unknown)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def paired_speedup(fpn_times: Sequence[float], vt_times: Sequence[float]) -> float:
    """Median over rounds of FPN time / VT-FPN time, each pair timed in the same round.

    Every round of :func:`~.timing.interleaved_times` runs all callables next to each
    other, so a round's ratio sees the same machine load in both terms: on a shared
    machine this is steadier than the ratio of the two medians.
    """
    return statistics.median(f / v for f, v in zip(fpn_times, vt_times))


Key = Tuple[str, str, Tuple[int, int], int]  # (kind, mode, size, batch)


def _groups(results: Dict[str, object]) -> Dict[Key, Dict[str, Dict[str, Dict]]]:
    """Measurements keyed by (kind, mode, size, batch), then neck, then form."""
    table: Dict[Key, Dict[str, Dict[str, Dict]]] = {}
    for m in results['measurements']:
        if m.get('kind') == 'stage':  # see _stages
            continue
        key = (m.get('kind', 'inference'), m['mode'], tuple(m['size']), m['batch'])
        table.setdefault(key, {}).setdefault(m['neck'], {})[m.get('form', 'eager')] = m
    return table


def best_forms(results: Dict[str, object]) -> Dict[Key, Dict[str, object]]:
    """Per configuration: each neck's fastest form (lowest median) and best vs best.

    Returns ``{key: dict(fpn=..., vt=..., speedup=..., macs_ratio=...)}`` with ``fpn`` and
    ``vt`` the winning measurements and ``speedup`` the paired FPN / VT-FPN time ratio of
    the two winners.
    """
    out = {}
    for key, necks in _groups(results).items():
        if not {'FPN', 'VT-FPN'} <= set(necks):
            continue
        fpn = min(necks['FPN'].values(), key=lambda m: m['stats']['median'])
        vt = min(necks['VT-FPN'].values(), key=lambda m: m['stats']['median'])
        macs = (fpn['macs'] / vt['macs']) if fpn.get('macs') and vt.get('macs') else None
        out[key] = dict(fpn=fpn, vt=vt, speedup=paired_speedup(fpn['times_s'], vt['times_s']),
                        macs_ratio=macs)
    return out


def floor_fractions(results: Dict[str, object]) -> Dict[Key, Dict[str, object]]:
    """Per configuration with ``'floor'`` rows: the fastest form of VT-FPN's lateral convs
    timed alone (``floor``) and the fraction of that floor's speed VT-FPN's best form
    reaches (``fraction``: median over rounds of floor time / VT-FPN time, the two timed in
    the same round, as :func:`paired_speedup`).

    The lateral convs are part of VT-FPN, so the fraction is below 1 on a steady machine;
    above 1 the floor's times were disturbed, and the table says so.
    """
    best, out = best_forms(results), {}
    for (kind, mode, size, batch), necks in _groups(results).items():
        key = ('inference', mode, size, batch)
        if kind == 'floor' and key in best and necks.get('VT-FPN'):
            floor = min(necks['VT-FPN'].values(), key=lambda m: m['stats']['median'])
            out[key] = dict(floor=floor, vt=best[key]['vt'],
                            fraction=paired_speedup(floor['times_s'],
                                                    best[key]['vt']['times_s']))
    return out


def _stages(results: Dict[str, object]) -> Dict[Tuple[Tuple[int, int], int], Dict[str, Dict]]:
    """VT-FPN's stages timed in place (:mod:`.stages`), keyed by (size, batch), then stage."""
    out: Dict[Tuple[Tuple[int, int], int], Dict[str, Dict]] = {}
    for m in results['measurements']:
        if m.get('kind') == 'stage':
            out.setdefault((tuple(m['size']), m['batch']), {})[m['stage']] = m
    return out


def _ms(m: Dict) -> str:
    s = m['stats']
    return f'{s["median"] * 1e3:.1f} [{s["q1"] * 1e3:.0f}-{s["q3"] * 1e3:.0f}]'


def _mib(m: Dict) -> str:
    return ' / '.join('n/a' if m.get(k) is None else f'{m[k] / 2 ** 20:.0f}'
                      for k in ('peak_memory_bytes', 'peak_rss_bytes'))


def _what(kind: str, mode: str) -> str:
    return f'{_LABEL[mode]} train step' if kind == 'train' else _LABEL[mode]


def format_table(results: Dict[str, object]) -> str:
    """Markdown: best against best, VT-FPN's floor, then every form of every model."""
    peak = results['matmul_gmacs']['peak']
    unit = 'CPU ms' if results['settings'].get('clock') == 'cpu' else 'ms'
    best = best_forms(results)
    lines = ['**Best against best** (each model in its fastest form):', '',
             f'| model | input | batch | FPN best {unit} (form) | VT-FPN best {unit} (form) '
             '| speed-up | MACs ratio | VT-FPN MiB | FPN MiB |',
             '|---|---|---|---|---|---|---|---|---|']
    for (kind, mode, size, batch), b in best.items():
        fpn, vt = b['fpn'], b['vt']
        lines.append(
            f'| {_what(kind, mode)} | {size[0]}x{size[1]} | {batch} | {_ms(fpn)} '
            f'({fpn["form"]}) | {_ms(vt)} ({vt["form"]}) | {b["speedup"]:.2f}x | '
            + (f'{b["macs_ratio"]:.2f}x' if b['macs_ratio'] else '-')
            + f' | {_mib(vt)} | {_mib(fpn)} |')
    floors = floor_fractions(results)
    if floors:
        lines += ['', '**VT-FPN floor**: its lateral 1x1 convs alone (work FPN does too), '
                  'timed in the same forms and rounds, fastest form; fraction: median over '
                  'rounds of floor / VT-FPN best:', '',
                  f'| input | batch | lateral GMACs | floor {unit} (form) | their GMAC/s '
                  f'| VT-FPN best {unit} | fraction of floor speed |',
                  '|---|---|---|---|---|---|---|']
        for (_, _, size, batch), f in floors.items():
            floor, vt_s = f['floor'], f['vt']['stats']['median']
            floor_s = floor['stats']['median']
            disturbed = (' (above 100%: the floor\'s times were disturbed; run again)'
                         if f['fraction'] > 1 else '')
            lines.append(f'| {size[0]}x{size[1]} | {batch} | {floor["macs"] / 1e9:.2f} '
                         f'| {floor_s * 1e3:.1f} ({floor["form"]}) '
                         f'| {floor["macs"] * batch / floor_s / 1e9:.1f} '
                         f'| {vt_s * 1e3:.1f} | {100 * f["fraction"]:.0f}%{disturbed} |')
    stages = _stages(results)
    if stages:
        form = next(iter(stages.values()))['total']['form']  # one form for every size
        lines += ['', f"**Where VT-FPN's time goes**: its stages timed in place in the {form} "
                  'form (forward hooks; other: what no stage covers), median ms, their '
                  'GMAC/s in brackets:', '',
                  '| input | batch | ' + ' | '.join(STAGES) + ' | total |',
                  '|---|---|' + '---|' * (len(STAGES) + 1)]
        for (size, batch), rows in stages.items():
            cells = []
            for stage in (*STAGES, 'total'):
                m = rows[stage]
                median = m['stats']['median']
                rate = (f' ({m["macs"] * batch / median / 1e9:.0f})'
                        if m.get('macs') and median > 0 else '')
                cells.append(f'{median * 1e3:.1f}{rate}')
            lines.append(f'| {size[0]}x{size[1]} | {batch} | ' + ' | '.join(cells) + ' |')
    lines += ['', '**Every form**:', '',
              f'| model | input | batch | form | FPN {unit} | VT-FPN {unit} | FPN / VT-FPN '
              '| FPN MiB | VT-FPN MiB | FPN GMAC/s | VT-FPN GMAC/s |',
              '|---|---|---|---|---|---|---|---|---|---|---|']
    for (kind, mode, size, batch), necks in _groups(results).items():
        forms = [f for f in necks.get('FPN', {}) if f in necks.get('VT-FPN', {})]
        for form in forms:
            fpn, vt = necks['FPN'][form], necks['VT-FPN'][form]
            rates = []
            for m in (fpn, vt):
                rate = None if not m.get('macs') else \
                    m['macs'] * batch / m['stats']['median'] / 1e9
                rates.append('-' if rate is None or kind == 'train' else f'{rate:.1f}')
            lines.append(
                f'| {_what(kind, mode)} | {size[0]}x{size[1]} | {batch} | {form} | {_ms(fpn)} '
                f'| {_ms(vt)} | {paired_speedup(fpn["times_s"], vt["times_s"]):.2f}x '
                f'| {_mib(fpn)} | {_mib(vt)} | {rates[0]} | {rates[1]} |')
    info = results['machine']
    lines.append('')
    device = info['device'] + (f' ({info["gpu"]})' if info.get('gpu') else '')
    kernels = info.get('vtseg_kernels', '?') or 'not built'
    if info.get('vtseg_kernels_threaded') is False:  # run only where torch has one thread
        kernels += (' built without OpenMP' + (': PyTorch\'s products ran instead'
                                               if info['threads'] > 1 else ''))
    lines.append(f'Machine: {info["cpu"]} ({info.get("cpu_isa", "?")}; PyTorch CPU '
                 f'capability {info.get("torch_cpu_capability", "?")}, vtseg kernels '
                 f'{kernels}), {info["logical_cores"]} logical cores, {info["threads"]} '
                 f'thread{"s" if info["threads"] != 1 else ""}, torch {info["torch"]}, '
                 f'device {device}; torch.matmul fp32 rate {peak:.1f} GMAC/s '
                 f'({results["settings"]["matmul_size"]}^3, best of before/after: '
                 f'{results["matmul_gmacs"]["before"]:.1f} / '
                 f'{results["matmul_gmacs"]["after"]:.1f}).')
    cpu_isa = results['settings'].get('cpu_isa', 'native')
    if cpu_isa != 'native':
        env = ' '.join(f'{k}={v}' for k, v in CPU_ISA_ENV[cpu_isa].items())
        lines.append(f'Instruction set: capped at {cpu_isa.upper()}, as on a CPU without '
                     f'AVX-512 ({env}): PyTorch, TorchInductor, oneDNN, MKL and vtseg\'s '
                     'kernels alike, for both models.')
    reused = info.get('host_memory_reused')
    if reused is not None:
        lines.append('Host memory: ' + ('freed memory reused (vtseg HostMemoryHook, as the '
                                        'configs declare), for both models.' if reused else
                                        'C library default (--host-memory system): every '
                                        'large map is mapped and faulted in afresh.'))
    load = results.get('load_average', {})
    if load.get('before') is not None:
        lines.append(f'1-minute load average before / after the run: {load["before"]:.2f} / '
                     f'{load["after"]:.2f} (other processes share the machine: compare '
                     'columns of one run, not runs).')
    if unit == 'CPU ms':
        lines.append('Clock: process CPU time of the single-threaded call (user + system, '
                     'page faults included), which leaves out the time other processes '
                     'held the core; the matmul rate is measured the same way.')
    lines.append('Times: median [interquartile range] of the timed repeats (per batch). '
                 'Speed-up: median over rounds of the FPN / VT-FPN time ratio, all forms '
                 'timed in every round. Memory: peak extra memory of one inference, MiB, '
                 'tensors / resident set size. MACs per image (forward). Forms: eager = as '
                 'built (NCHW); channels_last = weights and inputs NHWC; optimized = '
                 'vtseg.deploy.optimize_for_inference (conv-BN folding + channels_last + '
                 'few-rows linear layers); compile = torch.compile; training steps: forward + '
                 'loss + backward + SGD.')
    return '\n'.join(lines)


def scaling_exponents(results: Dict[str, object]) -> Dict[Tuple[str, str], float]:
    """Slope of log(latency) vs log(pixels) per (mode, neck) over the batch-1 inference
    rows, each size at that neck's best form."""
    points: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
    for (kind, mode, size, batch), b in best_forms(results).items():
        if kind == 'inference' and batch == 1:
            for neck, m in (('FPN', b['fpn']), ('VT-FPN', b['vt'])):
                points.setdefault((mode, neck), []).append(
                    (math.log(size[0] * size[1]), math.log(m['stats']['median'])))
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
    """Bar chart: per configuration, each neck's time in every form, best marked."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = {k: v for k, v in _groups(results).items() if k[0] in ('inference', 'train')}
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(3.2 * max(len(groups), 1), 4),
                             squeeze=False)
    colours = {'FPN': 'tab:blue', 'VT-FPN': 'tab:red'}
    for ax, ((kind, mode, size, batch), necks) in zip(axes[0], groups.items()):
        forms = sorted({f for n in necks.values() for f in n})
        width = 0.4
        for j, neck in enumerate(('FPN', 'VT-FPN')):
            meds = [necks.get(neck, {}).get(f, {}).get('stats', {}).get('median', math.nan)
                    * 1e3 for f in forms]
            ax.bar([i + (j - 0.5) * width for i in range(len(forms))], meds, width,
                   color=colours[neck], label=neck)
        ax.set_xticks(range(len(forms)))
        ax.set_xticklabels(forms, rotation=45, ha='right', fontsize=7)
        ax.set_title(f'{_what(kind, mode)} {size[0]}x{size[1]} b{batch}', fontsize=8)
        ax.set_ylabel('ms', fontsize=8)
        ax.legend(fontsize=7)
    info = results['machine']
    fig.suptitle(f'FPN vs VT-FPN, {info["cpu"]}, {info["threads"]} threads', fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
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
