"""Say what a checkpoint load did: loaded, missing, unexpected and mismatched tensors.

mmengine loads ``load_from`` and ``--resume`` checkpoints with ``strict=False``: a tensor
whose shape differs (a head trained for 171 classes loaded into a 20-class model) keeps its
initial value, the rest is loaded, and the only trace is a warning among the start-up logs.
:class:`CheckpointReportHook` compares the checkpoint with the model *before* mmengine
loads it, logs a summary (how many tensors and values load, then each mismatch with both
shapes), and refuses the load when it would silently half-load a model:

* any shape mismatch, unless ``allow_shape_mismatch=True`` (fine-tuning with another
  number of classes: the mismatched tensors then keep their initial values, as logged);
* nothing of the model in the checkpoint (a checkpoint of another model);
* on ``--resume``, any difference at all (the run being resumed had this very model).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence, Tuple

from mmengine.hooks import Hook
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmseg.registry import HOOKS
from torch import Tensor, nn

__all__ = ['CheckpointMismatchError', 'CheckpointLoadReport', 'compare_state_dicts',
           'CheckpointReportHook']

_MAX_LISTED = 10


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the model; the message lists the differences."""


@dataclass
class CheckpointLoadReport:
    """What loading a state dict into a model does (computed without loading it).

    Attributes:
        loaded: keys in both with equal shapes.
        missing: model keys absent from the checkpoint (they keep their initial values).
        unexpected: checkpoint keys the model does not have (ignored).
        shape_mismatch: ``key -> (checkpoint shape, model shape)`` (kept at initial values).
        loaded_values / model_values: numbers of elements loaded / in the model.
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: Dict[str, Tuple[tuple, tuple]] = field(default_factory=dict)
    loaded_values: int = 0
    model_values: int = 0

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def format(self, source: str = 'checkpoint') -> str:
        n_model = len(self.loaded) + len(self.missing) + len(self.shape_mismatch)
        lines = [f'{source}: loads {len(self.loaded)} of {n_model} model tensors '
                 f'({self.loaded_values:,} of {self.model_values:,} values).']
        if self.shape_mismatch:
            lines.append(f'  {len(self.shape_mismatch)} tensors differ in shape and keep '
                         'their initial values (checkpoint shape -> model shape):')
            lines += [f'    {k}: {tuple(c)} -> {tuple(m)}'
                      for k, (c, m) in list(self.shape_mismatch.items())[:_MAX_LISTED]]
        for keys, what in [(self.missing, 'model tensors missing from the checkpoint '
                            '(keep their initial values)'),
                           (self.unexpected, 'checkpoint tensors the model does not have '
                            '(ignored)')]:
            if keys:
                more = f', ... ({len(keys) - _MAX_LISTED} more)' if len(keys) > _MAX_LISTED \
                    else ''
                lines.append(f'  {len(keys)} {what}: {", ".join(keys[:_MAX_LISTED])}{more}')
        return '\n'.join(lines)


def compare_state_dicts(model: nn.Module, state_dict: Mapping[str, Tensor],
                        revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''),)
                        ) -> CheckpointLoadReport:
    """Compare a checkpoint's ``state_dict`` with ``model``'s, as mmengine would load it.

    Args:
        model: the model (unwrapped or wrapped in DDP).
        state_dict: the checkpoint's ``state_dict`` (or the bare checkpoint).
        revise_keys: ``(pattern, replacement)`` applied to checkpoint keys first, like
            ``Runner.load_checkpoint`` (default: strip a DDP ``module.`` prefix).
    """
    # Unwrap as mmengine's load_state_dict does: DDP and test-time augmentation (--tta).
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    ckpt = dict(state_dict)
    for pattern, repl in revise_keys:
        ckpt = {re.sub(pattern, repl, k): v for k, v in ckpt.items()}
    report = CheckpointLoadReport()
    for key, value in model.state_dict().items():
        if key.endswith('num_batches_tracked'):  # BN counters: mmengine ignores them too
            continue
        report.model_values += value.numel()
        if key not in ckpt:
            report.missing.append(key)
        elif not hasattr(ckpt[key], 'shape') or tuple(ckpt[key].shape) != tuple(value.shape):
            report.shape_mismatch[key] = (tuple(getattr(ckpt[key], 'shape', ())),
                                          tuple(value.shape))
        else:
            report.loaded.append(key)
            report.loaded_values += value.numel()
    own = model.state_dict()
    report.unexpected = [k for k in ckpt if k not in own and
                         not k.endswith('num_batches_tracked')]
    return report


@HOOKS.register_module()
class CheckpointReportHook(Hook):
    """Log a :class:`CheckpointLoadReport` for every checkpoint the Runner loads; refuse bad loads.

    Args:
        allow_shape_mismatch: load anyway when shapes differ (the mismatched tensors keep
            their initial values). For fine-tuning on a dataset with another class count.
        allow_missing: load anyway when model tensors are missing from the checkpoint
            (``load_from`` only; a resumed checkpoint must always match exactly).
    """

    priority = 'VERY_HIGH'

    def __init__(self, allow_shape_mismatch: bool = False, allow_missing: bool = True) -> None:
        self.allow_shape_mismatch = allow_shape_mismatch
        self.allow_missing = allow_missing

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state_dict = checkpoint.get('state_dict', checkpoint)
        report = compare_state_dicts(runner.model, state_dict)
        resume = bool(getattr(runner, '_resume', False))
        source = f"Checkpoint {getattr(runner, '_load_from', None) or 'being loaded'}"
        text = report.format(source)
        problems = []
        if not report.loaded:
            problems.append('no tensor of the model is in the checkpoint (is it a checkpoint '
                            'of another model?)')
        if report.shape_mismatch and (resume or not self.allow_shape_mismatch):
            problems.append('shapes differ; to fine-tune with another number of classes, '
                            "add dict(type='CheckpointReportHook', allow_shape_mismatch=True) "
                            'to custom_hooks')
        if resume and not report.exact:
            problems.append('a checkpoint to resume from must match the model exactly; '
                            'resume with the config that wrote it')
        elif report.missing and not self.allow_missing:
            problems.append('model tensors are missing and allow_missing=False')
        if problems:
            raise CheckpointMismatchError(f'{text}\nNot loading: ' + '; '.join(problems) + '.')
        if report.exact:
            runner.logger.info(text)
        else:
            runner.logger.warning(text)
