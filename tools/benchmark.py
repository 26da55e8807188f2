"""FPN vs VT-FPN, best against best: latency, peak memory, training step, side by side.

Examples::

    # Default (about 15-20 minutes on 2 cores, most of it compiling): the neck alone and
    # the whole R-50 model at 473x473 and 800x1216 in every form (eager, channels_last,
    # optimized, compile, optimized+compile), plus the R-50 training step at 473x473,
    # batch 2; tables, JSON and plot in work_dirs/benchmark.
    python tools/benchmark.py

    # Quick look: neck only, one size, no compiled forms, no training rows.
    python tools/benchmark.py --models neck --sizes 800x1216 \
        --forms eager,channels_last,optimized --train-sizes ""

    # On a GPU: the same tables, with torch.cuda.max_memory_allocated.
    python tools/benchmark.py --device cuda

    # On a machine shared with other processes: one thread, process CPU time.
    python tools/benchmark.py --threads 1 --clock cpu

    # As on a CPU without AVX-512: PyTorch, TorchInductor, oneDNN, MKL and vtseg's kernels
    # capped at AVX2 (the tool starts itself anew with the variables that do it).
    python tools/benchmark.py --cpu-isa avx2

See vtseg/analysis/benchmark/ for what is measured and how, docs/benchmarks.md for
results.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import torch

from vtseg.analysis.benchmark import (
    CPU_ISA_ENV,
    FORMS,
    HOST_MEMORY,
    MODES,
    PAPER_SIZES,
    TRAIN_FORMS,
    BenchmarkSettings,
    cpu_isa_applied,
    format_table,
    parse_size,
    run_benchmark,
    save_results,
)
from vtseg.cli import ArgumentParser, CLIError, device, positive_int, work_dir


def _sizes(text: str):
    return [parse_size(s) for s in text.split(',') if s.strip()]


def _names(text: str):
    return [n.strip() for n in text.split(',') if n.strip()]


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        description='Benchmark FPN vs VT-FPN, best against best (latency, peak memory, '
                    'training step).')
    default_sizes = ','.join(f'{h}x{w}' for h, w in PAPER_SIZES)
    parser.add_argument('--sizes', default=default_sizes,
                        help=f'comma-separated HEIGHTxWIDTH input sizes (default {default_sizes})')
    parser.add_argument('--models', default='neck,r50',
                        help=f'comma-separated subset of {",".join(MODES)}: neck (the neck '
                             'alone), r50 / r101 (whole segmentors); default neck,r50')
    parser.add_argument('--forms', default=None,
                        help=f'comma-separated forms each model is timed in, among '
                             f'{",".join(FORMS)} (default: all; on a GPU all but '
                             'onnxruntime)')
    parser.add_argument('--repeats', type=positive_int, default=5, help='timed calls per form')
    parser.add_argument('--warmup', type=int, default=1, help='untimed calls per form first')
    parser.add_argument('--batch', type=positive_int, default=4,
                        help='batch size of the throughput rows')
    parser.add_argument('--throughput-sizes', default='',
                        help='comma-separated sizes also timed at --batch (default none)')
    parser.add_argument('--train-sizes', default='473x473',
                        help='sizes of the R-50 training-step rows ("" to skip)')
    parser.add_argument('--train-batch', type=positive_int, default=2,
                        help='batch of the training-step rows')
    parser.add_argument('--train-forms', default='eager,channels_last',
                        help=f'forms of the training step, among {",".join(TRAIN_FORMS)}')
    parser.add_argument('--device', type=device,
                        default='cuda' if torch.cuda.is_available() else 'cpu',
                        help='cpu or cuda[:N] (default: cuda when there is one)')
    parser.add_argument('--threads', type=positive_int, default=None,
                        help='torch.set_num_threads (default: torch\'s choice)')
    parser.add_argument('--dataset', default=None,
                        help='config family, e.g. coco-stuff164k or lip (default: lip at '
                             '473x473, coco-stuff164k otherwise)')
    parser.add_argument('--config-dir', default='configs',
                        help='where {fpn,vtfpn}_r{50,101}_{dataset}.py live')
    parser.add_argument('--no-memory', action='store_true', help='skip peak-memory runs')
    parser.add_argument('--clock', choices=['wall', 'cpu'], default='wall',
                        help='wall: wall-clock latency (default); cpu: process CPU time of '
                             'a single-threaded run (needs --threads 1), steadier on a '
                             'machine shared with other processes')
    parser.add_argument('--host-memory', choices=list(HOST_MEMORY), default='reuse',
                        help='reuse: freed host memory serves the next allocation, as the '
                             'configs declare (HostMemoryHook; default); system: the C '
                             'library default, every large map mapped and faulted in afresh')
    parser.add_argument('--cpu-isa', choices=list(CPU_ISA_ENV), default='native',
                        help='native: the CPU\'s instruction set (default); avx2: both '
                             'models as on a CPU without AVX-512 (PyTorch, TorchInductor, '
                             'oneDNN, MKL and vtseg\'s kernels capped at AVX2; ONNX Runtime '
                             'cannot be capped and is left out)')
    parser.add_argument('--matmul-size', type=positive_int, default=2048,
                        help='side of the square fp32 torch.matmul whose rate the table reports')
    parser.add_argument('--out-dir', default='work_dirs/benchmark', type=work_dir,
                        help='where benchmark.{json,md} and benchmark_latency.png go')
    parser.add_argument('--from-json', default=None, metavar='BENCHMARK_JSON',
                        help='measure nothing: print the table of a saved benchmark.json '
                             'and write its table and plot to --out-dir')
    return parser


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the parsed ``args``; ``argv``, the arguments they were parsed from, starts the
    tool anew where ``--cpu-isa`` must be set before the libraries load."""
    if args.from_json:
        path = Path(args.from_json)
        try:
            results = json.loads(path.read_text())
            table = format_table(results)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CLIError(f'cannot read {path} as a benchmark.json written by this tool '
                           f'({type(e).__name__}: {e})') from None
        paths = save_results(results, Path(args.out_dir))
        print(table)
        print('wrote ' + ', '.join(str(p) for p in paths.values()))
        return 0
    try:
        settings = BenchmarkSettings(
            sizes=_sizes(args.sizes),
            modes=_names(args.models),
            forms=_names(args.forms) if args.forms is not None else
            [f for f in FORMS if f != 'onnxruntime'
             or (args.device == 'cpu' and args.cpu_isa == 'native')],
            warmup=args.warmup, repeats=args.repeats, batch=args.batch,
            throughput_sizes=_sizes(args.throughput_sizes),
            train_sizes=_sizes(args.train_sizes), train_batch=args.train_batch,
            train_forms=_names(args.train_forms), device=args.device,
            threads=args.threads, dataset=args.dataset, config_dir=args.config_dir,
            memory=not args.no_memory, matmul_size=args.matmul_size, clock=args.clock,
            host_memory=args.host_memory, cpu_isa=args.cpu_isa)
        if not cpu_isa_applied(args.cpu_isa):  # the libraries read it when they start
            settings.check(environment=False)
            env = dict(os.environ, **CPU_ISA_ENV[args.cpu_isa])
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv],
                      env)
        settings.check()
    except ValueError as e:
        raise CLIError(str(e)) from None
    results = run_benchmark(settings)
    paths = save_results(results, Path(args.out_dir))
    print()
    print(format_table(results))
    print()
    print('wrote ' + ', '.join(str(p) for p in paths.values()))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    return build_parser().run(lambda args: run(args, argv), argv)


if __name__ == '__main__':
    sys.exit(main())
