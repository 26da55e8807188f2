"""The one comparison of a checkpoint's tensors with a model's, and the checkpoint layouts.

mmengine loads ``load_from``, ``--resume``, ``init_model`` and ``PretrainedInit``
checkpoints with ``strict=False``: a tensor whose shape differs (a head trained for 171
classes loaded into a 20-class model) or that the checkpoint lacks (an FPN checkpoint in a
VT-FPN model: the tokenizers) keeps its initial value, and the only trace is a warning among
the start-up logs. :func:`compare_state_dicts` says what a load would do *before* it
happens; :meth:`StateDictReport.check` refuses a load that would leave model tensors unset
or mismatched unless the caller allows it. Every vtseg path that loads weights uses them:
:class:`~vtseg.checkpoint.hooks.CheckpointReportHook` (the Runner), the pretrained-backbone
initialiser (:mod:`vtseg.checkpoint.pretrained`) and :mod:`vtseg.apis.inference`.

:func:`extract_state_dict` finds the ``{name: tensor}`` mapping in common layouts: a bare
state dict (torchvision), ``state_dict`` / ``model`` wrappers (mmengine, DeiT-style) and key
prefixes such as ``backbone.`` (mmseg models) or ``module.`` (DistributedDataParallel),
detected by matching against the model's own names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mmengine.model import BaseTTAModel, is_model_wrapper
from torch import Tensor, nn

__all__ = ['CheckpointMismatchError', 'StateDictReport', 'compare_state_dicts',
           'extract_state_dict', 'unwrap_model']

_MAX_LISTED = 10
#: Wrappers around the state dict that training frameworks write.
_WRAPPER_KEYS = ('state_dict', 'model', 'module')


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not fit the model; the message lists the differences."""


def _listing(keys: Sequence[str], limit: Optional[int] = _MAX_LISTED) -> str:
    if limit is None or len(keys) <= limit:
        return ', '.join(keys)
    return ', '.join(keys[:limit]) + f', ... ({len(keys) - limit} more)'


@dataclass
class StateDictReport:
    """What loading a state dict into a model does (computed without loading it).

    Attributes:
        loaded: model keys in the checkpoint with equal shapes.
        missing: model keys absent from the checkpoint (they keep their initial values).
        expected_missing: absent by design (e.g. the VT stage of a VT-ResNet loaded from an
            ImageNet ResNet); never a reason to refuse.
        unexpected: checkpoint keys the model does not have (ignored).
        shape_mismatch: ``key -> (checkpoint shape, model shape)`` (kept at initial values).
        loaded_values / model_values: numbers of elements loaded / in the model.
        prefix: key prefix removed from the checkpoint's keys (see
            :func:`extract_state_dict`).
    """

    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    expected_missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: Dict[str, Tuple[tuple, tuple]] = field(default_factory=dict)
    loaded_values: int = 0
    model_values: int = 0
    prefix: str = ''

    @property
    def exact(self) -> bool:
        """Every model tensor is loaded and nothing is left over."""
        return not (self.missing or self.expected_missing or self.unexpected
                    or self.shape_mismatch)

    def format(self, source: str = 'checkpoint',
               max_listed: Optional[int] = _MAX_LISTED) -> str:
        """A summary line (tensors and values loaded), then the differences (at most
        ``max_listed`` keys per kind; ``None``: all)."""
        n_model = (len(self.loaded) + len(self.missing) + len(self.expected_missing)
                   + len(self.shape_mismatch))
        lines = [f'{source}: loads {len(self.loaded)} of {n_model} model tensors '
                 f'({self.loaded_values:,} of {self.model_values:,} values)'
                 + (f', key prefix {self.prefix!r} removed.' if self.prefix else '.')]
        if self.shape_mismatch:
            lines.append(f'  {len(self.shape_mismatch)} tensors differ in shape and keep '
                         'their initial values (checkpoint shape -> model shape):')
            lines += [f'    {k}: {tuple(c)} -> {tuple(m)}'
                      for k, (c, m) in list(self.shape_mismatch.items())[:max_listed]]
        for keys, what in [(self.missing, 'model tensors missing from the checkpoint '
                            '(keep their initial values)'),
                           (self.expected_missing, 'model tensors not in the checkpoint by '
                            'design (newly initialised)'),
                           (self.unexpected, 'checkpoint tensors the model does not have '
                            '(ignored)')]:
            if keys:
                lines.append(f'  {len(keys)} {what}: {_listing(keys, max_listed)}')
        return '\n'.join(lines)

    def check(self, source: str, *, allow_missing: bool = False,
              allow_shape_mismatch: bool = False, require_exact: bool = False,
              how_to_allow: str = '') -> None:
        """Raise :class:`CheckpointMismatchError` (with :meth:`format`) for a bad load.

        Refused: a checkpoint with no tensor of the model; shape mismatches unless
        ``allow_shape_mismatch``; missing model tensors unless ``allow_missing``; with
        ``require_exact`` (resuming) any difference but tensors missing by design.

        Args:
            source: the checkpoint's name in the message.
            how_to_allow: how the user asks for a partial load, appended to the message.
        """
        problems = []
        if not self.loaded:
            problems.append('no tensor of the model is in the checkpoint (is it a checkpoint '
                            'of another model?)')
        elif require_exact and (self.missing or self.unexpected or self.shape_mismatch):
            problems.append('a checkpoint to resume from must match the model exactly; '
                            'resume with the config that wrote it')
        else:
            if self.shape_mismatch and not allow_shape_mismatch:
                problems.append(f'{len(self.shape_mismatch)} model tensors differ in shape')
            if self.missing and not allow_missing:
                problems.append(f'{len(self.missing)} model tensors are missing')
            if problems and how_to_allow:
                problems.append(how_to_allow)
        if problems:
            raise CheckpointMismatchError(f'{self.format(source)}\nNot loading: '
                                          + '; '.join(problems) + '.')


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside DDP and test-time-augmentation wrappers, as mmengine loads it."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def compare_state_dicts(model: nn.Module, state_dict: Mapping[str, Any], *,
                        revise_keys: Sequence[Tuple[str, str]] = ((r'^module\.', ''),),
                        expected_missing_prefixes: Sequence[str] = ()) -> StateDictReport:
    """Compare a checkpoint's ``state_dict`` with ``model``'s, as mmengine would load it.

    BN ``num_batches_tracked`` counters are ignored on both sides (mmengine does too).

    Args:
        model: the model (unwrapped or wrapped in DDP / a TTA model).
        state_dict: the checkpoint's tensors, keyed as in the checkpoint.
        revise_keys: ``(pattern, replacement)`` applied to checkpoint keys first, like
            ``Runner.load_checkpoint`` (default: strip a DDP ``module.`` prefix).
        expected_missing_prefixes: model keys under these prefixes may be absent (they
            are reported as ``expected_missing``).
    """
    model = unwrap_model(model)
    ckpt = dict(state_dict)
    for pattern, repl in revise_keys:
        ckpt = {re.sub(pattern, repl, k): v for k, v in ckpt.items()}
    own = model.state_dict()
    report = StateDictReport()
    for key, value in own.items():
        if key.endswith('num_batches_tracked'):
            continue
        report.model_values += value.numel()
        if key not in ckpt:
            (report.expected_missing if key.startswith(tuple(expected_missing_prefixes))
             else report.missing).append(key)
        elif not hasattr(ckpt[key], 'shape') or tuple(ckpt[key].shape) != tuple(value.shape):
            report.shape_mismatch[key] = (tuple(getattr(ckpt[key], 'shape', ())),
                                          tuple(value.shape))
        else:
            report.loaded.append(key)
            report.loaded_values += value.numel()
    report.unexpected = sorted(k for k in ckpt if k not in own
                               and not k.endswith('num_batches_tracked'))
    return report


def _unwrap(checkpoint: Any, source: str) -> Dict[str, Tensor]:
    """Find the ``{name: tensor}`` mapping inside common checkpoint layouts."""
    state = checkpoint
    while isinstance(state, Mapping):
        tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
        if tensors:
            return tensors
        inner = next((state[k] for k in _WRAPPER_KEYS if isinstance(state.get(k), Mapping)),
                     None)
        if inner is None:
            break
        state = inner
    raise ValueError(f'{source}: no tensors found; expected a state dict, possibly inside '
                     f'one of {_WRAPPER_KEYS}')


def _best_prefix(keys: Sequence[str], model_keys: Sequence[str]) -> str:
    """The leading ``a.b.`` that, removed from checkpoint keys, matches most model keys."""
    wanted = set(model_keys)
    counts: Dict[str, int] = {}
    for key in keys:
        parts = key.split('.')
        for i in range(len(parts)):
            prefix = '.'.join(parts[:i]) + '.' if i else ''
            if key[len(prefix):] in wanted:
                counts[prefix] = counts.get(prefix, 0) + 1
    if not counts:
        return ''
    # Most matches; on a tie the shortest prefix.
    return max(counts, key=lambda p: (counts[p], -len(p)))


def extract_state_dict(checkpoint: Any, model: nn.Module, *, prefix: Optional[str] = None,
                       source: str = 'checkpoint') -> Tuple[Dict[str, Tensor], str]:
    """The checkpoint's tensors named as ``model`` names them.

    Args:
        checkpoint: a loaded checkpoint, or a state dict.
        model: the model the tensors are for (used to detect the key prefix).
        prefix: key prefix to remove, e.g. ``'backbone.'``; ``None`` detects it, ``''``
            removes nothing.
        source: name of the checkpoint in messages.

    Returns:
        ``(state_dict, prefix)``: keys with the prefix removed (keys without it dropped).
    """
    state = _unwrap(checkpoint, source)
    if prefix is None:
        prefix = _best_prefix(list(state), list(model.state_dict()))
    elif prefix and not prefix.endswith('.'):
        prefix += '.'
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f'{source}: no key starts with prefix {prefix!r}')
    return state, prefix
