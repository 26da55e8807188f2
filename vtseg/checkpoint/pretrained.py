"""ImageNet ResNet weights for (VT-)ResNet backbones: a registered weight initialiser.

torchvision's ResNet and mmseg's ``ResNet(style='pytorch')`` use the same parameter names
(``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}``/``bn{1-3}``/``downsample.{0,1}``), so no
renaming table is needed: mmseg and mmengine ship none for ResNet either
(``torchvision://resnet50`` loads into mmseg's ResNet as is). What
:class:`ResNetPretrainedInit` (``init_cfg=dict(type='ResNetPretrained', checkpoint=...)``)
adds over mmengine's ``PretrainedInit``:

* the checkpoint's layout and key prefix are recognised
  (:func:`~vtseg.checkpoint.state_dict.extract_state_dict`);
* the load is compared first (:func:`~vtseg.checkpoint.state_dict.compare_state_dicts`),
  and the report says which checkpoint tensors were not used (torchvision's ``fc.*``,
  ``layer4.*`` for a VT-ResNet), which parameters start fresh by design (the module's
  ``fresh_prefixes``: the VT stage), and which shared-stage parameters were not found or
  had another shape (a warning; ``strict=True`` refuses them).
"""
from __future__ import annotations

import logging
from typing import Any, Mapping, Optional, Union

import torch
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info
from mmengine.registry import WEIGHT_INITIALIZERS
from torch import nn

from .io import load_checkpoint
from .state_dict import StateDictReport, compare_state_dicts, extract_state_dict

__all__ = ['ResNetPretrainedInit', 'load_resnet_weights']


def load_resnet_weights(model: nn.Module, checkpoint: Union[str, Mapping[str, Any]], *,
                        prefix: Optional[str] = None,
                        map_location: Union[str, torch.device] = 'cpu',
                        strict: bool = False, logger: Any = 'current') -> StateDictReport:
    """Load an ImageNet ResNet checkpoint (torchvision or mmseg keys) into ``model``.

    Every entry whose name and shape match is copied; the rest is reported. Entries under
    ``model.fresh_prefixes`` (for :class:`~vtseg.models.VTResNet` the VT stage) are
    expected to be missing.

    Args:
        model: a (VT-)ResNet backbone.
        checkpoint: file name / URL (see :func:`~vtseg.checkpoint.io.load_checkpoint`) or
            a loaded checkpoint.
        prefix: key prefix to remove (``None``: detect it, e.g. ``backbone.``).
        map_location: for :func:`torch.load`.
        strict: refuse (``CheckpointMismatchError``) if a shared-stage entry is missing
            or has another shape.
        logger: mmengine logger (name) for the report; ``'silent'`` logs nothing.

    Returns:
        The :class:`~vtseg.checkpoint.state_dict.StateDictReport` (also logged).
    """
    source = checkpoint if isinstance(checkpoint, str) else '<state dict>'
    if isinstance(checkpoint, str):
        checkpoint = load_checkpoint(checkpoint, map_location)
    state, prefix = extract_state_dict(checkpoint, model, prefix=prefix, source=source)
    report = compare_state_dicts(model, state, revise_keys=(),
                                 expected_missing_prefixes=getattr(model, 'fresh_prefixes',
                                                                   ()))
    report.prefix = prefix
    report.check(source, allow_missing=not strict, allow_shape_mismatch=not strict,
                 how_to_allow='is this a ResNet checkpoint of the right depth?')
    incompatible = model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    assert not incompatible.unexpected_keys, incompatible.unexpected_keys
    level = logging.WARNING if report.missing or report.shape_mismatch else logging.INFO
    print_log(report.format(f'Pretrained weights {source}', max_listed=None), logger=logger,
              level=level)
    return report


@WEIGHT_INITIALIZERS.register_module(name='ResNetPretrained')
class ResNetPretrainedInit(PretrainedInit):
    """mmengine's ``PretrainedInit`` for (VT-)ResNet backbones, with the load report.

    Args:
        checkpoint: file, ``torchvision://``, ``open-mmlab://`` or URL.
        prefix: key prefix to remove (``None``: detect it, e.g. ``backbone.``).
        map_location: for :func:`torch.load`.
        strict: refuse shared-stage entries that are missing or of another shape.
    """

    def __init__(self, checkpoint: str, prefix: Optional[str] = None,
                 map_location: str = 'cpu', strict: bool = False) -> None:
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        self.strict = strict

    def __call__(self, module: nn.Module) -> None:
        load_resnet_weights(module, self.checkpoint, prefix=self.prefix,
                            map_location=self.map_location, strict=self.strict)
        if hasattr(module, '_params_init_info'):  # set while a parent module initialises
            update_init_info(module, init_info=self._get_init_info())
