"""The CPU demo application behind ``tools/demo.py``: FPN vs VT-FPN on the synthetic
VTDemo set.

Steps: generate the data (:mod:`vtseg.datasets.demo`), train both configs with
``tools/train.py`` (logs stream to the terminal), evaluate both with ``tools/test.py``,
then measure MACs and parameters (:func:`vtseg.analysis.flops.model_complexity`) and
forward time (both models timed in the same process, interleaved, median), and print one
table with the all-background baseline for scale.

A trained model is reused when its work folder holds a checkpoint written for the same
fingerprint: the fully resolved config, the data set's parameters and, for a model that
uses vtseg classes, the source of ``vtseg/models``. Anything else retrains from scratch.

The demo runs the configs in ``configs/demo/`` with ``tools/train.py`` and ``tools/test.py``
of a vtseg source tree (a clone): those are not part of the installed package (``pip
install`` ships ``vtseg/`` only). With vtseg installed normally (not editable), run it from a
clone, ``python tools/demo.py``, or pass ``root=<clone>`` to :func:`run_demo`; without a
source tree it stops and says so (:func:`find_source_tree`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ['DemoModel', 'DEMO_MODELS', 'background_baseline', 'find_source_tree',
           'run_demo', 'format_table']

FINGERPRINT_FILE = 'demo_fingerprint.json'
# Library warnings (deprecations in mmseg/mmengine) would bury the training logs.
QUIET_WARNINGS = 'ignore::UserWarning,ignore::DeprecationWarning,ignore::FutureWarning'


@dataclass
class DemoModel:
    """One row of the comparison."""

    name: str
    config: str
    metrics: Dict[str, float] = field(default_factory=dict)
    flops: Dict[str, int] = field(default_factory=dict)
    params: Dict[str, int] = field(default_factory=dict)
    times_ms: List[float] = field(default_factory=list)
    checkpoint: Optional[str] = None
    reused: bool = False
    train_minutes: Optional[float] = None


DEMO_MODELS = (('FPN', 'configs/demo/fpn_r18_vtdemo.py'),
               ('VT-FPN', 'configs/demo/vtfpn_r18_vtdemo.py'))
#: What the demo needs from a vtseg source tree.
SOURCE_TREE_FILES = tuple(c for _, c in DEMO_MODELS) + ('tools/train.py', 'tools/test.py')


def find_source_tree(root: Optional[str] = None) -> Path:
    """The vtseg source tree (a clone) holding the demo configs and tools.

    Args:
        root: the tree; ``None`` tries the current directory, then the tree this module
            lies in (an editable install or a clone on ``PYTHONPATH``).

    Raises:
        FileNotFoundError: no candidate holds :data:`SOURCE_TREE_FILES`; says why.
    """
    here = Path(__file__).resolve().parents[2]
    candidates = [Path(root)] if root is not None else [Path.cwd(), here]
    for tree in candidates:
        if all((tree / f).is_file() for f in SOURCE_TREE_FILES):
            return tree.resolve()
    tried = ', '.join(str(c) for c in candidates)
    raise FileNotFoundError(
        f'the demo trains {" and ".join(c for _, c in DEMO_MODELS)} with tools/train.py and '
        f'tools/test.py of a vtseg source tree, and {tried} holds none of them: an '
        'installed vtseg package contains only the vtseg/ code, not configs/ or tools/. '
        'Run python tools/demo.py from a clone of vtseg (an installed vtseg is fine), or '
        'pass root=<the clone>.')


def _models_source() -> Path:
    """Where the vtseg/models code runs from (installed or in a tree)."""
    from .. import models

    return Path(models.__file__).resolve().parent


def _data_options(data_root: str) -> List[str]:
    return [f'{loader}.dataset.data_root={data_root}'
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


def _schedule_options(iters: Optional[int]) -> List[str]:
    """``--cfg-options`` for a shorter (or longer) run of the demo's schedule."""
    if iters is None:
        return []
    warmup = max(1, min(50, iters // 10))
    return [f'train_cfg.max_iters={iters}', f'default_hooks.checkpoint.interval={iters}',
            f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}',
            f'param_scheduler.1.end={iters}']


def _fingerprint(config: str, options: Sequence[str], data_root: str) -> str:
    """Hash of what a trained checkpoint depends on."""
    from mmengine.config import Config, DictAction

    cfg = Config.fromfile(config)
    parsed: dict = {}
    for opt in options:
        key, value = opt.split('=', 1)
        parsed[key] = DictAction._parse_iterable(value)
    cfg.merge_from_dict(parsed)
    cfg.pop('work_dir', None)
    digest = hashlib.sha256(cfg.pretty_text.encode())
    meta = Path(data_root) / 'meta.json'
    digest.update(meta.read_bytes() if meta.is_file() else b'no data')
    if _uses_vtseg_models(cfg.model):  # an mmseg-only model does not depend on vtseg code
        for src in sorted(_models_source().rglob('*.py')):
            digest.update(src.read_bytes())
    return digest.hexdigest()


def _uses_vtseg_models(node: object) -> bool:
    """Whether a model config names a class registered by vtseg."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    if isinstance(node, dict):
        cls = MODELS.get(node['type']) if isinstance(node.get('type'), str) else None
        if cls is not None and cls.__module__.startswith('vtseg.'):
            return True
        return any(_uses_vtseg_models(v) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_uses_vtseg_models(v) for v in node)
    return False


def _run(cmd: Sequence[str]) -> None:
    """Run a tool, streaming its output; raise with the command line if it fails."""
    print('\n$ ' + ' '.join(cmd), flush=True)
    env = dict(os.environ, PYTHONWARNINGS=QUIET_WARNINGS)
    completed = subprocess.run(list(cmd), env=env)
    if completed.returncode != 0:
        raise RuntimeError(f'command failed with exit code {completed.returncode}: '
                           + ' '.join(cmd))


def _last_checkpoint(work_dir: str) -> Optional[str]:
    pointer = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(pointer):
        return None
    with open(pointer) as f:
        path = f.read().strip()
    return path if osp.isfile(path) else None


def train(model: DemoModel, *, work_dir: str, data_root: str, iters: Optional[int],
          retrain: bool, tools_dir: str) -> None:
    """Train ``model`` with tools/train.py unless a checkpoint for the same fingerprint
    exists in ``work_dir``."""
    # The demo evaluates with tools/test.py afterwards: skip the validation at the end.
    options = _data_options(data_root) + _schedule_options(iters) + \
        ['train_cfg.val_begin=1000000000']
    fingerprint = _fingerprint(model.config, options, data_root)
    stamp = osp.join(work_dir, FINGERPRINT_FILE)
    checkpoint = _last_checkpoint(work_dir)
    if not retrain and checkpoint and osp.isfile(stamp):
        with open(stamp) as f:
            saved = json.load(f)
        if saved.get('fingerprint') == fingerprint and saved.get('checkpoint') == checkpoint:
            print(f'\n[{model.name}] reusing {checkpoint} (same config, data and model code; '
                  'pass --retrain to train again)', flush=True)
            model.checkpoint, model.reused = checkpoint, True
            return
    if osp.isfile(stamp):
        os.remove(stamp)
    if osp.isfile(osp.join(work_dir, 'last_checkpoint')):
        os.remove(osp.join(work_dir, 'last_checkpoint'))  # never resume a stale run
    print(f'\n[{model.name}] training {model.config}', flush=True)
    start = time.perf_counter()
    _run([sys.executable, osp.join(tools_dir, 'train.py'), model.config, '--work-dir',
          work_dir, '--cfg-options', *options])
    model.train_minutes = (time.perf_counter() - start) / 60
    checkpoint = _last_checkpoint(work_dir)
    if checkpoint is None:
        raise RuntimeError(f'tools/train.py wrote no checkpoint to {work_dir}')
    with open(stamp, 'w') as f:
        json.dump({'fingerprint': fingerprint, 'checkpoint': checkpoint}, f, indent=2)
    model.checkpoint = checkpoint


def evaluate(model: DemoModel, *, work_dir: str, data_root: str, tools_dir: str) -> None:
    """Evaluate ``model.checkpoint`` with tools/test.py and read back its metrics."""
    from ..engine.runner import read_test_metrics

    test_dir = osp.join(work_dir, 'test')
    print(f'\n[{model.name}] evaluating {model.checkpoint}', flush=True)
    _run([sys.executable, osp.join(tools_dir, 'test.py'), model.config, model.checkpoint,
          '--work-dir', test_dir, '--cfg-options', *_data_options(data_root)])
    model.metrics = read_test_metrics(test_dir)


def background_baseline(data_root: str, num_classes: int, split: str = 'val') -> Dict:
    """Metrics of predicting class 0 everywhere, computed by mmseg's own IoU code."""
    import cv2
    from mmseg.evaluation import IoUMetric

    ann_dir = Path(data_root) / 'ann_dir' / split
    files = sorted(ann_dir.glob('*.png'))
    if not files:
        raise FileNotFoundError(f'no label PNGs in {ann_dir}')
    totals = None
    for path in files:
        label = torch.from_numpy(cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.int64))
        areas = IoUMetric.intersect_and_union(torch.zeros_like(label), label, num_classes,
                                              ignore_index=255)
        totals = areas if totals is None else [t + a for t, a in zip(totals, areas)]
    ret = IoUMetric.total_area_to_metrics(*totals, metrics=['mIoU'])
    return {'mIoU': float(np.round(np.nanmean(ret['IoU']) * 100, 2)),
            'IoU': [float(v) for v in np.round(ret['IoU'] * 100, 2)]}


def measure(rows: Sequence[DemoModel], size: int, repeats: int) -> None:
    """Fill FLOPs, parameters and forward times of the trained models."""
    from ..analysis.flops import model_complexity
    from ..apis import init_model

    models = {}
    for row in rows:
        with warnings.catch_warnings():  # mmseg's deprecation notes while building
            warnings.simplefilter('ignore', UserWarning)
            model = init_model(row.config, row.checkpoint, device='cpu')
        cost = model_complexity(model, (size, size))
        row.flops, row.params = cost.flops, cost.params
        models[row.name] = model
    inputs = torch.randn(1, 3, size, size)
    print(f'\ntiming the forward pass: batch 1, {size}x{size}, {torch.get_num_threads()} '
          f'threads, {repeats} interleaved repeats', flush=True)
    from ..analysis.benchmark import interleaved_times

    with torch.no_grad():
        times = interleaved_times({n: functools.partial(m, inputs, mode='tensor')
                                   for n, m in models.items()},
                                  warmup=3, repeats=repeats, device='cpu')
    for row in rows:
        row.times_ms = [t * 1e3 for t in times[row.name]]


def format_table(rows: Sequence[DemoModel], baseline: Dict, classes: Sequence[str],
                 size: int) -> str:
    """The comparison as a Markdown table (MACs counted by mmengine's FlopAnalyzer)."""
    def iou(row: DemoModel, name: str) -> str:
        value = row.metrics.get(f'IoU.{name}')
        return '-' if value is None else f'{value:.1f}'

    head = ['model', 'mIoU', 'IoU cued_red / cued_blue', 'IoU disc_large / disc_small',
            'neck MACs', 'total MACs', 'params', 'forward ms (median)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        lines.append('| ' + ' | '.join([
            row.name, f"{row.metrics['mIoU']:.2f}",
            f"{iou(row, 'cued_red')} / {iou(row, 'cued_blue')}",
            f"{iou(row, 'disc_large')} / {iou(row, 'disc_small')}",
            f"{row.flops['neck'] / 1e6:.1f} M", f"{row.flops[''] / 1e6:.1f} M",
            f"{row.params[''] / 1e6:.2f} M",
            f'{statistics.median(row.times_ms):.1f}']) + ' |')
    by_class = dict(zip(classes, baseline['IoU']))
    lines.append('| ' + ' | '.join([
        'all background', f"{baseline['mIoU']:.2f}",
        f"{by_class['cued_red']:.1f} / {by_class['cued_blue']:.1f}",
        f"{by_class['disc_large']:.1f} / {by_class['disc_small']:.1f}",
        '-', '-', '-', '-']) + ' |')
    return '\n'.join(lines)


def run_demo(*, work_dir: str = 'work_dirs/demo', data_root: str = 'data/vtdemo',
             num_train: int = 1000, num_val: int = 200, seed: int = 0,
             iters: Optional[int] = None, repeats: int = 30, retrain: bool = False,
             root: Optional[str] = None) -> str:
    """Run the whole demo; returns the printed table.

    Args:
        root: the vtseg source tree with ``configs/demo`` and ``tools`` (see
            :func:`find_source_tree`).
    """
    from ..datasets.demo import generate_demo_data
    from ..datasets.vtdemo_scenes import CLASSES

    if iters is not None and iters < 1:
        raise ValueError(f'--iters must be a positive integer, got {iters}')
    if repeats < 1:
        raise ValueError(f'--repeats must be a positive integer, got {repeats}')
    tree = find_source_tree(root)
    tools_dir = str(tree / 'tools')
    start = time.perf_counter()
    work_dir, data_root = osp.abspath(work_dir), osp.abspath(data_root)
    generate_demo_data(data_root, num_train=num_train, num_val=num_val, seed=seed)
    with open(osp.join(data_root, 'meta.json')) as f:
        size = json.load(f)['spec']['size']
    rows = [DemoModel(name, str(tree / config)) for name, config in DEMO_MODELS]
    for row in rows:
        train(row, work_dir=osp.join(work_dir, row.name.lower().replace('-', '')),
              data_root=data_root, iters=iters, retrain=retrain, tools_dir=tools_dir)
    for row in rows:
        evaluate(row, work_dir=osp.join(work_dir, row.name.lower().replace('-', '')),
                 data_root=data_root, tools_dir=tools_dir)
    measure(rows, size, repeats)
    baseline = background_baseline(data_root, len(CLASSES))
    table = format_table(rows, baseline, CLASSES, size)
    trained = ', '.join(
        f'{r.name} reused' if r.reused else f'{r.name} trained in {r.train_minutes:.1f} min'
        for r in rows)
    minutes = (time.perf_counter() - start) / 60
    print(f'\nFPN vs VT-FPN on the VTDemo val set ({num_val} images, {size}x{size}; '
          f'{trained}). MACs at {size}x{size} (mmengine FlopAnalyzer), forward time on this '
          f'CPU, batch 1.\n')
    print(table)
    print(f'\ndemo finished in {minutes:.1f} min; work dir {work_dir}', flush=True)
    return table
