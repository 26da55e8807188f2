"""The model, the label loader and the dataset must agree on the number of classes.

A head with fewer outputs than the dataset has classes fails inside the loss with an index
error (a device-side assert on CUDA) that names no setting; a head with more trains and
reports a metric over the dataset's classes while predicting classes that do not exist;
a :class:`~vtseg.datasets.CheckedLoadAnnotations` with the wrong ``num_classes`` rejects
good labels or lets bad ones through. :class:`ClassCountCheckHook` (declared in
``configs/_base_/default_runtime.py``) compares them in ``before_run`` of every training,
validation and test run, whichever entry point built the Runner.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop
from mmseg.registry import HOOKS
from torch import nn

from .loading import CheckedLoadAnnotations

__all__ = ['ClassCountError', 'ClassCountCheckHook', 'check_class_counts']

_LOOPS = (('train', '_train_loop'), ('val', '_val_loop'), ('test', '_test_loop'))


class ClassCountError(ValueError):
    """The model's heads, the label loader and the dataset disagree on the class count."""


def _heads(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(config path, head)`` for every decode and auxiliary head with ``num_classes``."""
    for name in ('decode_head', 'auxiliary_head'):
        head = getattr(model, name, None)
        if isinstance(head, (nn.ModuleList, list, tuple)):
            for i, sub in enumerate(head):
                if hasattr(sub, 'num_classes'):
                    yield f'model.{name}.{i}', sub
        elif head is not None and hasattr(head, 'num_classes'):
            yield f'model.{name}', head


def _leaves(dataset) -> Iterator:
    """The datasets under mmengine's wrappers (``ConcatDataset``, ``RepeatDataset``...)."""
    if hasattr(dataset, 'datasets'):
        for sub in dataset.datasets:
            yield from _leaves(sub)
    elif hasattr(dataset, 'dataset') and not hasattr(dataset, 'pipeline'):
        yield from _leaves(dataset.dataset)
    else:
        yield dataset


def _label_loaders(transform) -> Iterator[CheckedLoadAnnotations]:
    """Every :class:`CheckedLoadAnnotations` in a pipeline (``TestTimeAug`` included)."""
    if isinstance(transform, CheckedLoadAnnotations):
        yield transform
    for attr in ('transforms', 'subroutines'):
        for sub in getattr(transform, attr, None) or []:
            yield from _label_loaders(sub)


def check_class_counts(model: nn.Module, datasets: Dict[str, object]) -> List[str]:
    """Raise :class:`ClassCountError` where heads, label loaders and datasets disagree.

    Args:
        model: the segmentor (wrapped or not).
        datasets: ``{'train_dataloader': dataset, ...}`` of built datasets.

    Returns:
        Warnings: label loaders without ``num_classes`` (values are then not checked).
    """
    model = model.module if is_model_wrapper(model) else model
    warnings = []
    for where, dataset in datasets.items():
        for leaf in _leaves(dataset):
            classes = (getattr(leaf, 'metainfo', None) or {}).get('classes')
            if not classes:
                continue
            n, kind = len(classes), type(leaf).__name__
            names = ', '.join(map(str, classes[:6])) + (', ...' if n > 6 else '')
            for path, head in _heads(model):
                if head.num_classes != n:
                    raise ClassCountError(
                        f'{path}.num_classes={head.num_classes} but the dataset of {where} '
                        f'({kind}) has {n} classes ({names}); set {path}.num_classes={n}, '
                        f'or give the dataset the classes the model predicts '
                        f'({where}.dataset.metainfo=dict(classes=[...])).')
            for loader in _label_loaders(leaf.pipeline):
                if loader.num_classes is None:
                    warnings.append(f'{where}: CheckedLoadAnnotations has no num_classes, so '
                                    f'label values beyond the {n} classes are not checked; '
                                    f'set num_classes={n} in it.')
                elif loader.num_classes != n:
                    raise ClassCountError(
                        f'CheckedLoadAnnotations in the pipeline of {where} has '
                        f'num_classes={loader.num_classes} but its dataset ({kind}) has {n} '
                        f'classes ({names}); set num_classes={n} in it.')
    return warnings


@HOOKS.register_module()
class ClassCountCheckHook(Hook):
    """Check class counts (:func:`check_class_counts`) before the first iteration."""

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        datasets = {}
        for split, attr in _LOOPS:
            loop = getattr(runner, attr, None)
            if isinstance(loop, BaseLoop):  # built for this run (never built here)
                datasets[f'{split}_dataloader'] = loop.dataloader.dataset
        for warning in check_class_counts(runner.model, datasets):
            runner.logger.warning(warning)
