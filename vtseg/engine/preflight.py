"""One forward pass before training, so that parts that do not fit fail at build time.

Each part of a segmentor checks its own arguments when it is built (VTFPN rejects zero
tokens or heads that do not divide the token width), but whether the parts fit together
(``neck.in_channels`` against the backbone's ``out_indices`` and widths,
``decode_head.in_channels`` against the neck's ``out_channels``) is only known when
tensors flow. :func:`check_model_forward` runs backbone, neck and head once on a blank
image in eval mode without gradients and, if a part fails, raises
:class:`ModelConfigError` naming that part, the shapes it received and the settings to
compare. :class:`ModelCheckHook` (``default_hooks.model_check`` in the shipped configs)
runs it before the first training iteration, whichever script runs the config.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmseg.registry import HOOKS
from torch import Tensor, nn

__all__ = ['ModelCheckHook', 'ModelConfigError', 'check_model_forward']


class ModelConfigError(ValueError):
    """Parts of a model that do not fit together; the message names the part."""


def _shapes(x) -> list:
    if isinstance(x, Tensor):
        return [tuple(x.shape)]
    return [tuple(t.shape) for t in x] if isinstance(x, (list, tuple)) else [type(x).__name__]


def _settings(module: nn.Module, names: Sequence[str]) -> str:
    found = [f'{n}={getattr(module, n)!r}' for n in names if hasattr(module, n)]
    return ', '.join(found) or 'its in_channels'


def _run(name: str, module: nn.Module, x, fix: str, **kwargs):
    try:
        return module(x, **kwargs)
    except (RuntimeError, ValueError, IndexError, AssertionError) as e:
        raise ModelConfigError(
            f'model.{name} ({type(module).__name__}) fails on inputs of shape {_shapes(x)}: '
            f'{e}\nCheck {fix}.') from e


@torch.no_grad()
def check_model_forward(model: nn.Module, input_size: Optional[Tuple[int, int]] = None,
                        in_channels: Optional[int] = None) -> None:
    """Run ``model`` once on a (1, C, H, W) zero image; raise if its parts do not fit.

    Args:
        model: an mmseg segmentor (DDP-wrapped or not), already on its device.
        input_size: (H, W) of the test image; default (64, 64). Pass the config's
            ``crop_size`` for backbones that need a fixed size.
        in_channels: C; default: the data preprocessor's number of mean values, else 3.

    Shape:
        - builds a (1, C, H, W) input; backbone outputs, neck outputs and the head's
          logits are checked in turn.
    """
    if is_model_wrapper(model):
        model = model.module
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device('cpu')
    if in_channels is None:
        mean = getattr(getattr(model, 'data_preprocessor', None), 'mean', None)
        in_channels = int(mean.numel()) if isinstance(mean, Tensor) else 3
    h, w = input_size or (64, 64)
    x = torch.zeros(1, in_channels, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        backbone, neck = getattr(model, 'backbone', None), getattr(model, 'neck', None)
        head = getattr(model, 'decode_head', None)
        if backbone is None or head is None:  # not an EncoderDecoder: the whole model
            _run('forward', model, x, 'the model settings', mode='tensor')
            return
        feats = _run('backbone', backbone, x, 'the backbone settings and input_size '
                     f'{(h, w)}')
        if neck is not None:
            feats = _run('neck', neck, feats, f'neck {_settings(neck, ["in_channels"])} '
                         f'against the backbone outputs {_shapes(feats)} (out_indices and '
                         'widths)')
        _run('decode_head', head, feats, f'decode_head '
             f'{_settings(head, ["in_channels", "in_index"])} against the inputs it gets '
             f'{_shapes(feats)}')
    finally:
        model.train(was_training)


@HOOKS.register_module()
class ModelCheckHook(Hook):
    """Run :func:`check_model_forward` once before the first training iteration.

    Args:
        input_size: (H, W) of the test image; default: the config's ``crop_size``, else
            (64, 64).
    """

    priority = 'VERY_HIGH'

    def __init__(self, input_size: Optional[Tuple[int, int]] = None) -> None:
        self.input_size = tuple(input_size) if input_size is not None else None

    def before_train(self, runner) -> None:
        size = self.input_size or runner.cfg.get('crop_size')
        check_model_forward(runner.model, tuple(size) if size is not None else None)
