"""Load ImageNet ResNet checkpoints into (VT-)ResNet backbones and report every key.

torchvision's ResNet and mmseg's ``ResNet(style='pytorch')`` use the same parameter names
(``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}``/``bn{1-3}``/``downsample.{0,1}``, checked in
``tests/test_vt_resnet.py``), so no renaming table is needed: mmseg and mmengine ship none
for ResNet either (``torchvision://resnet50`` loads into mmseg's ResNet as is). What this
module adds over mmengine's ``PretrainedInit``:

* the checkpoint's layout is recognised: a bare state dict (torchvision), ``state_dict`` /
  ``model`` wrappers (mmengine, DeiT-style) and key prefixes such as ``backbone.``
  (mmseg/mmpretrain models) or ``module.`` (DistributedDataParallel) are found by matching
  against the model's own names;
* a :class:`LoadReport` says which checkpoint tensors were loaded, which were not used
  (torchvision's ``fc.*``, ``layer4.*`` for a VT-ResNet), which model parameters were not
  found (they keep their initialisation; for a VT-ResNet the VT stage, expected) and which
  had another shape; it is logged through mmengine's logger.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader
from torch import Tensor, nn

__all__ = ['LoadReport', 'load_checkpoint', 'extract_state_dict', 'load_resnet_weights']

#: Wrappers around the state dict that training frameworks write.
_WRAPPER_KEYS = ('state_dict', 'model', 'module')


@dataclass
class LoadReport:
    """What :func:`load_resnet_weights` did with each key."""

    source: str
    prefix: str
    loaded: List[str] = field(default_factory=list)
    #: checkpoint keys (after removing ``prefix``) that no model entry uses
    unused: List[str] = field(default_factory=list)
    #: model entries absent from the checkpoint that were expected to be (shared stages)
    missing: List[str] = field(default_factory=list)
    #: model entries absent from the checkpoint by design (``model.fresh_prefixes``)
    fresh: List[str] = field(default_factory=list)
    #: (key, checkpoint shape, model shape) of entries left out for a shape mismatch
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(
        default_factory=list)

    def summary(self) -> str:
        """Several lines naming every key that was not loaded."""
        lines = [f'loaded {len(self.loaded)} tensors from {self.source}'
                 + (f' (key prefix {self.prefix!r} removed)' if self.prefix else '')]
        if self.unused:
            lines.append(f'not used, in the checkpoint but not in the model '
                         f'({len(self.unused)}): {", ".join(self.unused)}')
        if self.fresh:
            lines.append(f'not in the checkpoint, newly initialised by design '
                         f'({len(self.fresh)}): {", ".join(self.fresh)}')
        if self.missing:
            lines.append(f'NOT FOUND in the checkpoint, keep their initialisation '
                         f'({len(self.missing)}): {", ".join(self.missing)}')
        if self.mismatched:
            lines.append('NOT LOADED, shape differs (checkpoint vs model): ' + ', '.join(
                f'{k} {tuple(a)} vs {tuple(b)}' for k, a, b in self.mismatched))
        return '\n'.join(lines)


def load_checkpoint(filename: str, map_location: Union[str, torch.device] = 'cpu') -> Any:
    """Read a checkpoint file (or ``torchvision://``, ``open-mmlab://``, URL) with mmengine's
    :class:`~mmengine.runner.CheckpointLoader`, keeping torch's weights-only loading.

    Raises:
        FileNotFoundError: naming the file.
        RuntimeError: when weights-only loading refuses the file, with the fix.
    """
    try:
        return CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    except pickle.UnpicklingError as err:
        hint = ''
        if 'getattr' in str(err):
            hint = (' It pickles builtins.getattr, which mmengine writes when a training '
                    'run saves its message hub without vtseg imported. Re-save only the '
                    'weights (torch.save(ckpt["state_dict"], path)) from a trusted copy, or '
                    'load it with torch.load(path, weights_only=False) if you trust it.')
        raise RuntimeError(f'cannot load checkpoint {filename!r} with weights-only loading: '
                           f'{err}.{hint}') from err


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
        checkpoint: what :func:`load_checkpoint` returned, or a state dict.
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


def load_resnet_weights(model: nn.Module, checkpoint: Union[str, Mapping[str, Any]], *,
                        prefix: Optional[str] = None,
                        map_location: Union[str, torch.device] = 'cpu',
                        strict: bool = False, logger: Any = 'current') -> LoadReport:
    """Load an ImageNet ResNet checkpoint (torchvision or mmseg keys) into ``model``.

    Every entry whose name and shape match is copied; the rest is reported. Entries of
    ``model`` under ``model.fresh_prefixes`` (for :class:`~vtseg.models.VTResNet` the VT
    stage) are expected to be missing and reported as newly initialised.

    Args:
        model: a (VT-)ResNet backbone.
        checkpoint: file name / URL (see :func:`load_checkpoint`) or a loaded checkpoint.
        prefix: key prefix to remove (``None``: detect it, e.g. ``backbone.``).
        map_location: for :func:`torch.load`.
        strict: raise ``RuntimeError`` if a shared-stage entry is missing or mismatched.
        logger: mmengine logger (name) for the report; ``'silent'`` logs nothing.

    Returns:
        The :class:`LoadReport` (also logged).
    """
    source = checkpoint if isinstance(checkpoint, str) else '<state dict>'
    if isinstance(checkpoint, str):
        checkpoint = load_checkpoint(checkpoint, map_location)
    state, prefix = extract_state_dict(checkpoint, model, prefix=prefix, source=source)
    own = model.state_dict()
    fresh_prefixes = tuple(getattr(model, 'fresh_prefixes', ()))
    report = LoadReport(source=source, prefix=prefix)
    to_load = {}
    for key, value in state.items():
        if key not in own:
            report.unused.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        else:
            to_load[key] = value
    for key in own:
        if key not in state:
            (report.fresh if key.startswith(fresh_prefixes) else report.missing).append(key)
    report.loaded = sorted(to_load)
    report.unused.sort()
    if not to_load:
        raise RuntimeError(f'{source}: no tensor matches the model by name and shape '
                           f'(prefix {prefix!r}); is this a ResNet checkpoint of the right '
                           f'depth? First checkpoint keys: {list(state)[:5]}')
    if strict and (report.missing or report.mismatched):
        raise RuntimeError(f'load_resnet_weights(strict=True) failed:\n{report.summary()}')
    incompatible = model.load_state_dict(to_load, strict=False)
    assert not incompatible.unexpected_keys, incompatible.unexpected_keys
    level = logging.WARNING if report.missing or report.mismatched else logging.INFO
    print_log(report.summary(), logger=logger, level=level)
    return report
