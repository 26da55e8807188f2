"""Capture the visual-token attention of a model (paper Sec. 6, Figure 5).

Paper: Wu et al., "Visual Transformers", https://arxiv.org/abs/2006.03677

Two kinds of maps are read from a model without changing any forward signature, with
forward hooks on named modules (the approach of vit-pytorch's ``Recorder``):

* the **spatial attention** ``A`` of every tokenizer (``FilterTokenizer``,
  ``RecurrentTokenizer``, ``PoolingTokenizer``, ``ClusteringTokenizer``): the hook sits on
  the tokenizer itself and reads the ``attn`` it returns, ``(B, L, h, w)``, each map summing
  to one over the ``h x w`` pixels. (The pooling tokenizer's weights come from bilinear
  interpolation, not from its ``attn_softmax``, so the tokenizer output is the one place
  all four share.)
* the **token self-attention** ``W`` of every ``TokenTransformer``: the hook sits on its
  ``attn_softmax`` submodule, ``(B, heads, N, N)`` with rows summing to one over the N
  attended tokens; heads are averaged.

Which transformer relates which tokenizer's tokens is declared by the models themselves:
a module with a ``token_groups()`` method (``VTFPN``, ``VTResNet``, ``VTModule``) returns
``[(transformer, [(label, tokenizer), ...]), ...]`` with the tokenizers in the order their
tokens are joined. For the two vtseg models this gives

* VT-FPN: ``neck.tokenizers.{i}`` (labels ``level{i}``) all belong to the one shared
  ``neck.transformer``; level ``i`` owns the token rows ``i*L .. (i+1)*L - 1``;
* VT-ResNet: ``backbone.vt_modules.{i}.tokenizer`` (``vt_module{i}``) belongs to
  ``backbone.vt_modules.{i}.transformer``, which attends over that module's tokens only.

A tokenizer no module declares is recorded without a transformer. While recording, every
attention block runs on its explicit path
(:func:`~vtseg.models.layers.attention.explicit_attention`), so the weights exist; the
blocks' paths are restored afterwards.

The transformer-mixed attention of the paper's second row is
``Â[:, l] = sum_l' W[l, l'] A[:, l']``. Tokens of different VT-FPN levels come from maps of
different resolutions, so every map is first brought to the original image resolution
(:func:`to_image_space`, where each map is again a distribution over the image pixels) and
mixed there; ``Â`` then also sums to one over the image pixels.

Shape shorthand: B batch, L tokens of one tokenizer, N tokens attended by a transformer,
(h, w) a tokenizer's feature map, (H, W) the original image.
"""
from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import (
    ClusteringTokenizer,
    FilterTokenizer,
    PoolingTokenizer,
    RecurrentTokenizer,
    explicit_attention,
)

__all__ = [
    'TOKENIZER_TYPES', 'VTLevel', 'LevelAttention', 'LevelMaps', 'AttentionRecorder',
    'find_vt_levels', 'attention_entropy', 'uniform_entropy', 'mix_attention',
    'to_image_space', 'prepare_image', 'image_attention',
]

#: The vtseg tokenizers whose spatial attention is captured.
TOKENIZER_TYPES = (FilterTokenizer, RecurrentTokenizer, PoolingTokenizer, ClusteringTokenizer)


@dataclass(frozen=True)
class VTLevel:
    """One tokenizer and the rows its tokens occupy in the transformer relating them.

    Attributes:
        label: short, file-name friendly name, as the model declares it (``level{i}`` for
            VT-FPN, ``vt_module{i}`` for VT-ResNet), otherwise the module name with dots
            replaced by underscores.
        tokenizer: module name of the tokenizer, e.g. ``neck.tokenizers.0``.
        transformer: module name of its ``TokenTransformer`` (None if it has none).
        token_offset: first row of this tokenizer's tokens in the transformer's attention.
        num_tokens: L.
    """

    label: str
    tokenizer: str
    transformer: Optional[str]
    token_offset: int
    num_tokens: int


@dataclass
class LevelAttention:
    """What one forward pass recorded for one :class:`VTLevel`.

    Shape:
        - attn: (B, L, h, w) spatial attention ``A``, each map sums to one over h * w.
        - mixing: (B, L, N) head-averaged token self-attention ``W`` of this level's L
          tokens (rows) over all N tokens their transformer attends (columns), rows summing
          to one; None when the level has no transformer or it could not be matched.
    """

    level: VTLevel
    attn: Tensor
    mixing: Optional[Tensor]


@dataclass
class LevelMaps:
    """The maps of one level for one image, raw and at the original image resolution.

    Shape:
        - raw: (L, h, w) spatial attention as captured (sums to one over h * w).
        - image: (L, H, W) the same maps at the original image resolution, renormalised to
          sum to one over the H * W image pixels.
        - mixed: (L, H, W) transformer-mixed attention ``Â`` at image resolution, or None.
        - mixing: (L, N) the head-averaged token self-attention rows used for ``Â``.
    """

    level: VTLevel
    raw: Tensor
    image: Tensor
    mixed: Optional[Tensor]
    mixing: Optional[Tensor]

    @property
    def label(self) -> str:
        return self.level.label


def _describe(model: nn.Module) -> str:
    """``EncoderDecoder (backbone=ResNet, neck=FPN, decode_head=FPNHead)``."""
    parts = [f'{p}={type(getattr(model, p)).__name__}'
             for p in ('backbone', 'neck', 'decode_head')
             if isinstance(getattr(model, p, None), nn.Module)]
    return type(model).__name__ + (f' ({", ".join(parts)})' if parts else '')


def _declared_groups(model: nn.Module) -> Dict[str, Tuple[str, str, int]]:
    """tokenizer name -> (transformer name, label, token offset), as the models declare.

    The outermost module with a ``token_groups()`` method speaks for everything below it
    (VT-ResNet for its VT modules).
    """
    names = {id(m): n for n, m in model.named_modules()}
    declared: Dict[str, Tuple[str, str, int]] = {}
    owners: List[str] = []
    for name, module in model.named_modules():
        if any(o == '' or name == o or name.startswith(f'{o}.') for o in owners):
            continue
        groups = getattr(module, 'token_groups', None)
        if not callable(groups):
            continue
        owners.append(name)
        for transformer, members in groups():
            offset = 0
            for label, tokenizer in members:
                declared[names[id(tokenizer)]] = (names[id(transformer)], label, offset)
                offset += tokenizer.num_tokens
    return declared


def find_vt_levels(model: nn.Module) -> List[VTLevel]:
    """Every vtseg tokenizer of ``model`` with its transformer, in module order.

    Raises:
        ValueError: when ``model`` has no vtseg tokenizer; the message names the model
            type and the modules that were expected.
    """
    modules = dict(model.named_modules())
    names = [n for n, m in modules.items() if isinstance(m, TOKENIZER_TYPES)]
    if not names:
        expected = ', '.join(f'vtseg.models.layers.{t.__name__}' for t in TOKENIZER_TYPES)
        raise ValueError(
            f'{_describe(model)} has no visual-token modules to visualise: expected at least '
            f'one tokenizer ({expected}), usually with a vtseg.models.layers.TokenTransformer,'
            ' as in a VTFPN neck (neck.tokenizers.{i}, neck.transformer) or a VTResNet '
            'backbone (backbone.vt_modules.{i}.tokenizer, .transformer). Use a VT-FPN or '
            'VT-ResNet config.')
    declared = _declared_groups(model)
    labels = [declared[n][1] if n in declared else n.replace('.', '_') for n in names]
    if len(set(labels)) < len(labels):  # e.g. VT modules in both backbone and neck
        labels = [f'{n.split(".")[0]}_{lab}' for n, lab in zip(names, labels)]
    if len(set(labels)) < len(labels):
        labels = [n.replace('.', '_') for n in names]
    levels = []
    for name, label in zip(names, labels):
        transformer, _, offset = declared.get(name, (None, None, 0))
        levels.append(VTLevel(label, name, transformer, offset, modules[name].num_tokens))
    return levels


class AttentionRecorder:
    """Context manager recording token attention with forward hooks.

    Example::

        with torch.no_grad(), AttentionRecorder(model) as rec:
            model(inputs, data_samples, mode='tensor')
        levels = rec.collect()  # one LevelAttention per tokenizer

    The hooks are removed when the block ends, also when it raises. Run exactly one forward
    pass inside the block (whole-image inference): a module called several times (sliding
    window inference, test-time augmentation) is reported as an error by :meth:`collect`.

    Args:
        model: any module containing vtseg tokenizers (see :func:`find_vt_levels`).
        levels: the levels to record (default: all of ``find_vt_levels(model)``).
    """

    def __init__(self, model: nn.Module, levels: Optional[Sequence[VTLevel]] = None) -> None:
        self.model = model
        self.levels = find_vt_levels(model) if levels is None else list(levels)
        self.token_attn: Dict[str, List[Tensor]] = {}    # tokenizer -> [(B, L, h, w)]
        self.token_mixing: Dict[str, List[Tensor]] = {}  # transformer -> [(B, heads, N, N)]
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self._explicit: Optional[contextlib.ExitStack] = None

    def clear(self) -> None:
        """Forget what was recorded."""
        self.token_attn = {lv.tokenizer: [] for lv in self.levels}
        self.token_mixing = {lv.transformer: [] for lv in self.levels if lv.transformer}

    def _tokenizer_hook(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            if not (isinstance(output, tuple) and len(output) == 2 and output[1].dim() == 4):
                raise TypeError(f'{name} ({type(module).__name__}) should return '
                                '(tokens, attn) with attn of shape (B, L, H, W)')
            self.token_attn[name].append(output[1].detach())
        return hook

    def _transformer_hook(self, name: str):
        def hook(module: nn.Module, args, output: Tensor) -> None:
            self.token_mixing[name].append(output.detach())  # (B, heads, N, N)
        return hook

    def __enter__(self) -> AttentionRecorder:
        if self._handles:
            raise RuntimeError('AttentionRecorder is already recording; nest two recorders '
                               'instead of entering one twice')
        self.clear()
        modules = dict(self.model.named_modules())
        self._explicit = contextlib.ExitStack()
        self._explicit.enter_context(explicit_attention(self.model))
        try:
            for lv in self.levels:
                self._handles.append(modules[lv.tokenizer].register_forward_hook(
                    self._tokenizer_hook(lv.tokenizer)))
            for name in self.token_mixing:
                self._handles.append(modules[name].attn_softmax.register_forward_hook(
                    self._transformer_hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> bool:
        self.remove()
        return False

    def remove(self) -> None:
        """Remove all hooks and restore the attention paths (done by ``__exit__``)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._explicit is not None:
            self._explicit.close()
            self._explicit = None

    def collect(self) -> List[LevelAttention]:
        """The recorded maps, one :class:`LevelAttention` per level.

        Raises:
            RuntimeError: when a tokenizer ran zero or several times.
        """
        for name, calls in self.token_attn.items():
            if len(calls) != 1:
                raise RuntimeError(
                    f'{name} ran {len(calls)} times while recording; run exactly one '
                    'forward pass over the whole image inside AttentionRecorder (no sliding '
                    "window: use mode='tensor' or test_cfg mode='whole')")
        mixing = {name: self._head_average(name) for name in self.token_mixing}
        out = []
        for lv in self.levels:
            attn = self.token_attn[lv.tokenizer][0]
            w = mixing.get(lv.transformer) if lv.transformer else None
            if w is not None:
                w = w[:, lv.token_offset:lv.token_offset + lv.num_tokens]  # (B, L, N)
            out.append(LevelAttention(lv, attn, w))
        return out

    def _head_average(self, name: str) -> Optional[Tensor]:
        """(B, N, N) head-averaged attention of transformer ``name``, None if unusable."""
        calls = self.token_mixing[name]
        group = [lv for lv in self.levels if lv.transformer == name]
        expected = sum(lv.num_tokens for lv in group)
        reason = None
        if len(calls) != 1:
            reason = f'it ran {len(calls)} times'
        elif calls[0].dim() != 4 or calls[0].shape[-1] != expected:
            reason = (f'its attention has shape {tuple(calls[0].shape)} but its tokenizers '
                      f'({", ".join(lv.tokenizer for lv in group)}) give {expected} tokens')
        if reason:
            warnings.warn(f'no transformer-mixed attention for {name}: {reason}',
                          stacklevel=3)
            return None
        return calls[0].float().mean(1)  # average over heads: (B, heads, N, N) -> (B, N, N)


def attention_entropy(attn: Tensor) -> Tensor:
    """Entropy in nats of maps that sum to one over their last two dimensions.

    ``-sum_p a_p ln a_p`` with ``0 ln 0 = 0``; a uniform map over ``H x W`` pixels gives
    ``ln(HW)`` (:func:`uniform_entropy`), a one-hot map zero.

    Shape:
        - attn: (..., H, W) -> (...)
    """
    attn = attn.double()
    return -torch.special.xlogy(attn, attn).sum((-2, -1))


def uniform_entropy(height: int, width: int) -> float:
    """``ln(HW)``, the entropy of a uniform map: the baseline :func:`attention_entropy`
    is compared with."""
    return math.log(height * width)


def mix_attention(maps: Tensor, mixing: Tensor) -> Tensor:
    """Transformer-mixed attention ``Â[:, l] = sum_l' W[l, l'] A[:, l']`` (Figure 5, row 2).

    All maps must share one resolution (bring VT-FPN levels to image resolution first).

    Shape:
        - maps: (N, H, W) ``A`` of all N tokens the transformer attends, in token order.
        - mixing: (L, N) rows of ``W`` (each summing to one).
        - returns (L, H, W)
    """
    if maps.shape[0] != mixing.shape[-1]:
        raise ValueError(f'mix_attention: {mixing.shape[-1]} mixing weights per token but '
                         f'{maps.shape[0]} maps')
    return torch.einsum('ln,nhw->lhw', mixing.to(maps.dtype), maps)


def _padding(meta: Mapping, input_size: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of the model input, as mmseg records it."""
    # SegDataPreProcessor(test_cfg=...) writes 'img_padding_size'; mmseg's stack_batch
    # writes 'padding_size' for training-style batches (see BaseSegmentor.postprocess_result).
    for key in ('img_padding_size', 'padding_size'):
        if meta.get(key) is not None:
            return tuple(int(p) for p in meta[key])
    # No record: mmseg only ever pads at the bottom and on the right.
    img_h, img_w = meta.get('img_shape', input_size)[:2]
    return 0, int(input_size[1] - img_w), 0, int(input_size[0] - img_h)


def to_image_space(maps: Tensor, input_size: Sequence[int], meta: Mapping) -> Tensor:
    """Feature-resolution maps -> original image resolution, as mmseg maps logits back.

    The feature map covers the (padded) model input, so the maps are resized bilinearly to
    ``input_size``, the data preprocessor's padding is cropped off, a test-time flip is
    undone, and the result is resized to ``meta['ori_shape']`` (the steps of mmseg's
    ``BaseSegmentor.postprocess_result``). Each map is then renormalised to sum to one over
    the image pixels.

    Args:
        maps: attention maps over the feature map.
        input_size: (H_in, W_in) of the tensor the model ran on (after padding).
        meta: the image's ``SegDataSample.metainfo`` (``ori_shape``, ``img_shape``,
            ``img_padding_size`` / ``padding_size``, ``flip``, ``flip_direction``).

    Shape:
        - maps: (L, h, w) -> (L, H, W) with (H, W) = ``meta['ori_shape']``
    """
    h_in, w_in = (int(s) for s in input_size)
    x = F.interpolate(maps[None].float(), size=(h_in, w_in), mode='bilinear',
                      align_corners=False)  # (1, L, H_in, W_in)
    left, right, top, bottom = _padding(meta, (h_in, w_in))
    x = x[..., top:h_in - bottom, left:w_in - right]  # (1, L, img_h, img_w)
    if meta.get('flip'):
        x = x.flip(3 if meta.get('flip_direction') == 'horizontal' else 2)
    ori_h, ori_w = meta['ori_shape'][:2]
    x = F.interpolate(x, size=(int(ori_h), int(ori_w)), mode='bilinear',
                      align_corners=False)[0]  # (L, H, W)
    x = x.clamp_min(0)
    return x / x.sum((-2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def prepare_image(model: nn.Module, image: np.ndarray) -> dict:
    """Run the model's test pipeline on one BGR image: ``dict(inputs=[...], data_samples=[...])``.

    Uses ``model.cfg.test_pipeline`` (set by ``mmseg.apis.init_model``), else the test
    dataloader's pipeline, else ``LoadImageFromNDArray`` + ``PackSegInputs``; the loading
    step reads the array and annotation loading is dropped, as in mmseg's inference API.
    """
    from mmengine.dataset import Compose
    from mmseg.registry import TRANSFORMS

    cfg = getattr(model, 'cfg', None)
    pipeline = None
    if cfg is not None:
        pipeline = cfg.get('test_pipeline') or \
            cfg.get('test_dataloader', {}).get('dataset', {}).get('pipeline')
    pipeline = copy.deepcopy(list(pipeline)) if pipeline else [dict(type='PackSegInputs')]
    pipeline = [t for t in pipeline if not str(t.get('type', '')).startswith('LoadAnno')]
    if str(pipeline[0].get('type', '')).startswith('LoadImage'):
        pipeline[0] = dict(type='LoadImageFromNDArray')
    else:
        pipeline.insert(0, dict(type='LoadImageFromNDArray'))
    data = Compose([TRANSFORMS.build(t) for t in pipeline])(dict(img=image))
    return dict(inputs=[data['inputs']], data_samples=[data['data_samples']])


@torch.no_grad()
def image_attention(model: nn.Module, image: np.ndarray) -> List[LevelMaps]:
    """Spatial and transformer-mixed attention of every VT level for one image.

    Runs the model's test pipeline and data preprocessor, one whole-image forward pass
    (``mode='tensor'``: backbone, neck, decode head) under :class:`AttentionRecorder`, and
    maps everything back to the original image with :func:`to_image_space`.

    Args:
        model: an mmseg segmentor with VT modules, in eval mode.
        image: (H, W, 3) uint8 BGR image, as ``mmcv.imread`` returns it.
    """
    levels = find_vt_levels(model)
    data = model.data_preprocessor(prepare_image(model, image), False)
    with AttentionRecorder(model, levels) as recorder:
        model(data['inputs'], data['data_samples'], mode='tensor')
    captured = recorder.collect()
    meta = data['data_samples'][0].metainfo
    input_size = tuple(data['inputs'].shape[-2:])

    image_maps = [to_image_space(c.attn[0].float().cpu(), input_size, meta) for c in captured]
    out = []
    for c, img_map in zip(captured, image_maps):
        mixed = mixing = None
        if c.mixing is not None:
            mixing = c.mixing[0].cpu()  # (L, N)
            # All maps the transformer attends, in token order, at image resolution.
            group = sorted(((o.level.token_offset, m) for o, m in zip(captured, image_maps)
                            if o.level.transformer == c.level.transformer),
                           key=lambda pair: pair[0])
            mixed = mix_attention(torch.cat([m for _, m in group]), mixing)
        out.append(LevelMaps(c.level, c.attn[0].float().cpu(), img_map, mixed, mixing))
    return out
