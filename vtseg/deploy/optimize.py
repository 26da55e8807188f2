"""The inference optimisation step: one explicit, model-agnostic call.

Model code stays plain (it reads as the paper); the speed-ups that only hold at inference
are applied to a built model here, the same way to any mmseg model (FPN and VT-FPN alike):

1. **Conv-BN folding** (:func:`mmcv.cnn.fuse_conv_bn`): every eval-mode BatchNorm that
   follows a convolution is folded into the convolution's weight and bias and replaced by
   ``nn.Identity``, saving one pass over each map.
2. **channels_last**: parameters and buffers in NHWC memory format, so convolutions run on
   oneDNN's (CPU) and cuDNN's (GPU) NHWC kernels and the VT blocks read pixel sequences
   without a copy; outputs of a channels_last input stay channels_last.
3. **Few-rows linear layers** (:mod:`vtseg.deploy.few_rows_linear`): ``nn.Linear``
   layers applied to a few rows (a VT block's tokens) multiply them with ``vtseg._C``'s
   kernel, which reads the weight once as it is stored (CPU float32).
4. **torch.compile** (optional): the model's forward compiled by TorchInductor.

The model must not be trained afterwards: folded BatchNorms do not update their
statistics any more.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from mmcv.cnn import ConvModule
from mmcv.cnn import fuse_conv_bn as mmcv_fuse_conv_bn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .few_rows_linear import use_few_rows_linear

__all__ = ['optimize_for_inference', 'fold_conv_bn']


def _check_foldable(model: nn.Module) -> None:
    """mmcv folds a BN into the convolution registered before it; refuse the cases where
    that is not the convolution that feeds it."""
    for name, m in model.named_modules():
        if isinstance(m, ConvModule) and m.with_norm and isinstance(m.norm, _BatchNorm) \
                and m.order.index('norm') < m.order.index('conv'):
            raise ValueError(f'{name}: ConvModule with order={m.order} normalises before its '
                             'convolution, which cannot be folded; call '
                             'optimize_for_inference(..., fuse_conv_bn=False)')
        if isinstance(m, _BatchNorm) and (m.running_mean is None or not m.affine):
            raise ValueError(f'{name}: {type(m).__name__} without running statistics or '
                             'affine parameters cannot be folded; call '
                             'optimize_for_inference(..., fuse_conv_bn=False)')


@torch.no_grad()
def fold_conv_bn(model: nn.Module) -> nn.Module:
    """Fold eval-mode BatchNorms into the preceding convolutions, in place (mmcv's
    :func:`~mmcv.cnn.fuse_conv_bn`, after checking that every fold is valid)."""
    _check_foldable(model)
    return mmcv_fuse_conv_bn(model.eval())


def optimize_for_inference(model: nn.Module, *, fuse_conv_bn: bool = True,
                           channels_last: bool = True, few_rows_linear: bool = True,
                           compile: bool = False,
                           compile_kwargs: Optional[Dict[str, Any]] = None,
                           inplace: bool = False) -> nn.Module:
    """Return ``model`` ready for fast inference (see the module docstring).

    Args:
        model: any model (an mmseg segmentor, a neck, a backbone).
        fuse_conv_bn: fold eval-mode BatchNorms into the preceding convolutions.
        channels_last: convert parameters and buffers to channels_last.
        few_rows_linear: make ``nn.Linear`` layers use the few-rows kernel where it applies.
        compile: wrap the result in :func:`torch.compile`.
        compile_kwargs: passed to :func:`torch.compile` (e.g. ``dict(mode='max-autotune')``).
        inplace: modify ``model`` itself instead of a copy.

    Returns:
        The optimised model, in eval mode. Feed it channels_last inputs
        (``x.contiguous(memory_format=torch.channels_last)``) for the full effect; NCHW
        inputs work too.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if fuse_conv_bn:
        model = fold_conv_bn(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if few_rows_linear:
        model = use_few_rows_linear(model)
    if compile:
        model = torch.compile(model, **(compile_kwargs or {}))
    return model
