"""VT-ResNet: a ResNet whose last stage is replaced by Visual Transformer modules (paper Sec. 4.1).

Paper: Wu et al., "Visual Transformers: Token-based Image Representation and Processing for
Computer Vision", https://arxiv.org/abs/2006.03677

Shape shorthand: B batch, C_3 stage-3 channels (256 for R18/34, 1024 for R50/101),
C feature channels of the VT stage, L tokens, C_T token channels.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

from mmcv.cnn import ConvModule
from mmseg.models.backbones import ResNet
from mmseg.registry import MODELS
from torch import Tensor, nn

from ..layers import VTModule

__all__ = ['VTResNet', 'VTResNetClassifier', 'VT_ARCH_SETTINGS']

#: Per depth: number of VT modules (paper Sec. 4.1: 2/3/3/3) and the feature width C the
#: modules work at. The only public row of the paper's appendix table is VT-R18
#: ``VT-C512-L16-CT1024 x2``: C = 512, so a 1x1 conv lifts stage 3's 256 channels to 512
#: (:attr:`VTResNet.vt_in_conv`); R34 has the same stage-3 width and gets the same C. R50 and
#: R101 run the modules directly on stage 3's 1024 channels (the paper: "input channels
#: 1024"); a 1x1 conv 1024 -> 512 would cost 103 M MACs, most of what Table 8 leaves for
#: the whole VT stage of VT-R50 (134 M).
VT_ARCH_SETTINGS: Dict[int, Tuple[int, int]] = {
    18: (2, 512),
    34: (3, 512),
    50: (3, 1024),
    101: (3, 1024),
}
_NUM_STAGES = 3  # convolutional stages kept from ResNet; the 4th is the VT stage
#: mmseg ResNet's default initialisation (what the VT stage keeps when the shared stages
#: are loaded from a checkpoint).
_RESNET_DEFAULT_INIT = [dict(type='Kaiming', layer='Conv2d'),
                        dict(type='Constant', val=1, layer=['_BatchNorm', 'GroupNorm'])]


def _pretrained_init_cfg(init_cfg: Union[dict, list, None]) -> Union[dict, list, None]:
    """``init_cfg`` with a ``Pretrained`` entry read as ``ResNetPretrained``.

    ``ResNetPretrained`` (:class:`vtseg.checkpoint.ResNetPretrainedInit`, a registered
    weight initialiser) loads the stem and stages 1-3 and reports every key; the VT stage,
    which no ResNet checkpoint holds, gets mmseg ResNet's default initialisation first.
    """
    cfgs = init_cfg if isinstance(init_cfg, list) else [init_cfg]
    pretrained = [c for c in cfgs if isinstance(c, dict) and c.get('type') == 'Pretrained']
    if not pretrained:
        return init_cfg
    if len(pretrained) > 1:
        raise ValueError('VTResNet: init_cfg holds more than one Pretrained entry')
    others = [c for c in cfgs if c is not pretrained[0]] or list(_RESNET_DEFAULT_INIT)
    return others + [dict(pretrained[0], type='ResNetPretrained')]


@MODELS.register_module()
class VTResNet(ResNet):
    """ResNet with its last stage (conv5_x) replaced by a stack of VT modules.

    The stem and stages 1-3 are mmseg's :class:`~mmseg.models.backbones.ResNet` (same
    parameter names ``conv1``/``bn1`` or ``stem``, ``layer1``..``layer3``, so ImageNet
    ResNet checkpoints load into them). The fourth stage is::

        X   = vt_in_conv(C3)                1x1 conv + norm + ReLU, C_3 -> C (skipped if equal)
        X, T = vt_modules[0](X)             filter tokenizer
        X, T = vt_modules[i](X, T)          recurrent tokenizer, i >= 1

    The VT stage keeps stage 3's resolution (stride 16): ResNet's stage-5 downsampling
    disappears, as in the paper (14x14 maps at 224x224). Output ``3`` is the projected
    feature map; the final tokens come from :meth:`forward_tokens` (classification) or
    :meth:`forward_features`.

    Cost choices, fitted to the paper's Table 8 with the options of the VT blocks (the
    appendix with the exact layers is not public; ``python -m vtseg.analysis.table8``
    prints the comparison):

    * transformer: 16 heads, K and Q of width C_T / 2 (v1 appendix), feed-forward hidden
      width C_T / 2, no separate value projection (the printed Eq. (3) mixes ``T_in``
      itself). The v1 value projection or a C_T-wide feed-forward network adds 1 M
      parameters per module and overshoots Table 8's parameters by 15-30 %.
    * projector: query/key width C / 2 (half the width it reads, as the transformer's
      C_T / 2), query-key product evaluated in token space (the paper's FLOPs only fit a
      cheap projector), value projection C_T -> C (v1 appendix).

    Args:
        depth: 18, 34, 50 or 101.
        num_vt_modules: VT modules in the last stage (default per depth, 2/3/3/3).
        vt_channels: C, feature width of the VT stage (default per depth, see
            :data:`VT_ARCH_SETTINGS`).
        num_tokens: L (paper: 16).
        token_channels: C_T (paper: 1024).
        num_heads, qk_channels, ffn_channels, value_proj: of the token transformer
            (``qk_channels`` / ``ffn_channels`` default to C_T / 2).
        projector_qk_channels: query/key width of the projectors (default C / 2).
        strides, dilations: of stages 1-3 (three entries each).
        out_indices: levels to return, among 0-2 (stages 1-3) and 3 (VT output).
        frozen_stages: -1 (none) to 4; 4 also freezes the VT stage.
        **kwargs: other arguments of mmseg's ResNet (``style``, ``norm_cfg``,
            ``norm_eval``, ``deep_stem``, ``init_cfg``, ...).

    Shape:
        - x: (B, 3, H, W)
        - returns one tensor per ``out_indices``: stage i (B, 64 * 2^i * e, H / 2^(i+2),
          W / 2^(i+2)) with e = 1 (BasicBlock) or 4 (Bottleneck); index 3 (B, C, H / 16, W / 16)
    """

    #: Parameter prefixes that a ResNet checkpoint cannot provide (they start fresh).
    fresh_prefixes: Tuple[str, ...] = ('vt_in_conv.', 'vt_modules.')

    def __init__(self,
                 depth: int,
                 *,
                 num_vt_modules: Optional[int] = None,
                 vt_channels: Optional[int] = None,
                 num_tokens: int = 16,
                 token_channels: int = 1024,
                 num_heads: int = 16,
                 qk_channels: Optional[int] = None,
                 ffn_channels: Optional[int] = None,
                 value_proj: bool = False,
                 projector_qk_channels: Optional[int] = None,
                 strides: Sequence[int] = (1, 2, 2),
                 dilations: Sequence[int] = (1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 **kwargs) -> None:
        if depth not in VT_ARCH_SETTINGS:
            raise ValueError(f'VTResNet: depth must be one of {sorted(VT_ARCH_SETTINGS)}, '
                             f'got {depth!r}')
        for name in ('num_stages', 'multi_grid', 'plugins'):
            if kwargs.get(name) is not None:
                raise ValueError(f'VTResNet: {name} is not supported (stages 1-3 are '
                                 'convolutional, stage 4 is the VT stage); remove it from '
                                 'the backbone config')
        for name, value in [('strides', strides), ('dilations', dilations)]:
            if len(value) != _NUM_STAGES:
                raise ValueError(f'VTResNet: {name} has one entry per convolutional stage '
                                 f'(3; the VT stage keeps stage 3\'s resolution), got '
                                 f'{tuple(value)}')
        out_indices = tuple(out_indices)
        if not out_indices or not set(out_indices) <= {0, 1, 2, 3}:
            raise ValueError('VTResNet: out_indices must be a non-empty subset of '
                             f'(0, 1, 2, 3) (3 = VT stage), got {out_indices}')
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= 4:
            raise ValueError(f'VTResNet: frozen_stages must be an int in [-1, 4], got '
                             f'{frozen_stages!r}')
        default_modules, default_channels = VT_ARCH_SETTINGS[depth]
        num_vt_modules = default_modules if num_vt_modules is None else num_vt_modules
        vt_channels = default_channels if vt_channels is None else vt_channels
        for name, value in [('num_vt_modules', num_vt_modules), ('vt_channels', vt_channels),
                            ('token_channels', token_channels)]:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f'VTResNet: {name} must be a positive integer, got {value!r}')

        # ResNet builds the stem and layer1..layer3 (the smallest hook: fewer stages) and
        # freezes them; out_indices are handled here.
        # init_cfg=dict(type='Pretrained', ...) loads the stem and stages 1-3 through the
        # registered ResNetPretrained initialiser (it reports every key; the VT stage keeps
        # ResNet's default initialisation).
        if 'init_cfg' in kwargs:
            kwargs['init_cfg'] = _pretrained_init_cfg(kwargs['init_cfg'])
        super().__init__(depth, num_stages=_NUM_STAGES, strides=tuple(strides),
                         dilations=tuple(dilations), out_indices=(0,),
                         frozen_stages=min(frozen_stages, _NUM_STAGES), **kwargs)
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.num_tokens = num_tokens
        self.token_channels = token_channels

        stage3_channels = self.inplanes  # ResNet leaves it at the last stage's width
        self.vt_in_conv = (
            ConvModule(stage3_channels, vt_channels, 1, conv_cfg=self.conv_cfg,
                       norm_cfg=self.norm_cfg, act_cfg=dict(type='ReLU'))
            if vt_channels != stage3_channels else nn.Identity())
        qk_channels = token_channels // 2 if qk_channels is None else qk_channels
        ffn_channels = token_channels // 2 if ffn_channels is None else ffn_channels
        if projector_qk_channels is None:
            projector_qk_channels = max(vt_channels // 2, 1)
        self.vt_modules = nn.ModuleList(
            VTModule(vt_channels, num_tokens, token_channels, recurrent=i > 0,
                     num_heads=num_heads, qk_channels=qk_channels, ffn_channels=ffn_channels,
                     value_proj=value_proj, projector_qk_channels=projector_qk_channels)
            for i in range(num_vt_modules))
        self.feat_dim = vt_channels
        self._freeze_stages()

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: Tensor) -> Tuple[List[Tensor], Tensor]:
        """All four levels and the final tokens.

        Returns:
            ``([stage1, stage2, stage3, vt], tokens)``; tokens: (B, L, C_T).
        """
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(self.norm1(self.conv1(x)))
        x = self.maxpool(x)
        levels = []
        for name in self.res_layers:
            x = getattr(self, name)(x)
            levels.append(x)
        x = self.vt_in_conv(x)  # (B, C_3, H/16, W/16) -> (B, C, H/16, W/16)
        tokens = None
        for module in self.vt_modules:
            x, tokens = module(x, tokens)  # (B, C, H/16, W/16), (B, L, C_T)
        levels.append(x)
        return levels, tokens

    def token_groups(self) -> List[Tuple[nn.Module, List[Tuple[str, nn.Module]]]]:
        """Each VT module's transformer relates that module's tokens only."""
        return [(m.transformer, [(f'vt_module{i}', m.tokenizer)])
                for i, m in enumerate(self.vt_modules)]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        levels, _ = self.forward_features(x)
        return tuple(levels[i] for i in self.out_indices)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """The last VT module's tokens, (B, L, C_T): what the classifier reads."""
        return self.forward_features(x)[1]

    # ------------------------------------------------------- freezing and init
    def _freeze_stages(self) -> None:
        """Freeze the stem and stages up to ``frozen_stages``; 4 includes the VT stage."""
        frozen = self.frozen_stages
        self.frozen_stages = min(frozen, _NUM_STAGES)  # ResNet's loop knows layer1..layer3
        try:
            super()._freeze_stages()
        finally:
            self.frozen_stages = frozen
        if frozen > _NUM_STAGES and hasattr(self, 'vt_modules'):
            for m in (self.vt_in_conv, self.vt_modules):
                m.eval()
                for param in m.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True) -> VTResNet:
        """ResNet's ``train`` (re-freezes stages, applies ``norm_eval``), returning ``self``
        so that ``model.eval()`` chains like any ``nn.Module`` (mmseg's returns ``None``)."""
        super().train(mode)
        return self


@MODELS.register_module()
class VTResNetClassifier(nn.Module):
    """VT-ResNet for ImageNet classification (paper Sec. 4.1): average of the final tokens,
    then one fully connected layer ``C_T -> num_classes``.

    Args:
        depth: 18, 34, 50 or 101.
        num_classes: classifier outputs (ImageNet: 1000).
        **backbone_kwargs: passed to :class:`VTResNet`.

    Shape:
        - x: (B, 3, H, W) -> logits (B, num_classes)
    """

    def __init__(self, depth: int, num_classes: int = 1000, **backbone_kwargs) -> None:
        super().__init__()
        backbone_kwargs.setdefault('out_indices', (3,))
        self.backbone = VTResNet(depth, **backbone_kwargs)
        self.fc = nn.Linear(self.backbone.token_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.backbone.forward_tokens(x)  # (B, L, C_T)
        return self.fc(tokens.mean(dim=1))        # (B, C_T) -> (B, num_classes)
