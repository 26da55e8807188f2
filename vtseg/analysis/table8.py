"""The paper's Table 8 (ImageNet, 224x224): VT-ResNets and ResNets, paper vs vtseg.

Both sides are classifiers: a plain ResNet is mmseg's ``ResNet(style='pytorch')`` (the
torchvision layout) + global average pooling + FC; a VT-ResNet is
:class:`~vtseg.models.VTResNetClassifier` (average of the final tokens + FC 1024 -> 1000).

Counting conventions, chosen so that the paper's four ResNet rows are reproduced:

* MACs: multiply-accumulates of convolutions, linear layers, matmuls and einsums, from
  :class:`mmengine.analysis.FlopAnalyzer`; normalisation layers are not counted (with them
  mmengine adds 0.3-0.5 % to a ResNet: 4.111 G instead of the paper's 4.089 G for R50).
  Softmax and elementwise operators are never counted.
* Parameters: normalisation-layer affine parameters (BN, LayerNorm, GroupNorm) are not
  counted (R50: 25.50 M without them, 25.56 M with; the paper says 25.5 M).

Run ``python -m vtseg.analysis.table8`` or ``python tools/get_flops.py --table8``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from mmseg.models.backbones import ResNet
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.backbones import VTResNetClassifier
from .flops import flop_analyzer

__all__ = ['PAPER_TABLE8', 'NOTES', 'ResNetClassifier', 'Table8Row', 'build_classifier',
           'count_macs', 'count_params', 'table8_rows', 'format_table8', 'main']

#: Paper Table 8: model -> (GMACs, M params) at 224x224.
PAPER_TABLE8: Dict[str, Tuple[float, float]] = {
    'R18': (1.814, 11.7), 'VT-R18': (1.569, 11.7),
    'R34': (3.664, 21.8), 'VT-R34': (3.236, 19.2),
    'R50': (4.089, 25.5), 'VT-R50': (3.412, 21.4),
    'R101': (7.802, 44.4), 'VT-R101': (7.129, 41.5),
}

#: Why a row differs from the paper by more than 5 % (printed under the table).
NOTES: Dict[str, str] = {
    'VT-R34': ('VT-R34 parameters: Table 8 gives 19.2 M, but the paper\'s own Table 2 '
               'VT-R34 (default recipe, 3.280 G) has 21.9 M; the two models differ in a '
               'way the paper does not describe. vtseg builds the same 3-module stack as '
               'VT-R18 (C512-L16-CT1024), which lands at Table 2\'s figures (-1.3 % MACs, '
               '-4.1 % parameters).'),
}

#: Operators of normalisation layers, left out of the MACs (see the module docstring).
_NORM_OPS = ('batch_norm', 'layer_norm', 'group_norm', 'instance_norm')
_NORM_LAYERS = (_BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)


class ResNetClassifier(nn.Module):
    """Plain ImageNet ResNet (torchvision layout) built from mmseg's ResNet.

    Shape:
        - x: (B, 3, H, W) -> logits (B, num_classes)
    """

    def __init__(self, depth: int, num_classes: int = 1000) -> None:
        super().__init__()
        self.backbone = ResNet(depth, style='pytorch', out_indices=(3,))
        self.fc = nn.Linear(self.backbone.feat_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.backbone(x)[-1]           # (B, 512 e, H/32, W/32)
        return self.fc(feat.mean(dim=(2, 3)))  # global average pool -> (B, num_classes)


def build_classifier(name: str) -> nn.Module:
    """``'R50'`` -> :class:`ResNetClassifier`, ``'VT-R50'`` -> :class:`VTResNetClassifier`."""
    if name not in PAPER_TABLE8:
        raise ValueError(f'unknown Table 8 model {name!r}; choose from {list(PAPER_TABLE8)}')
    depth = int(name.rsplit('R', 1)[1])
    return VTResNetClassifier(depth) if name.startswith('VT-') else ResNetClassifier(depth)


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Tuple[int, int] = (224, 224)) -> int:
    """Multiply-accumulates of one ``(1, 3, H, W)`` forward pass, normalisation excluded."""
    was_training = model.training
    model.eval()
    try:
        analyzer = flop_analyzer(model, torch.zeros(1, 3, *input_size))
        by_op = analyzer.by_operator()
    finally:
        model.train(was_training)
    return int(sum(v for op, v in by_op.items() if op not in _NORM_OPS))


def count_params(model: nn.Module) -> int:
    """Parameters without normalisation-layer affine parameters (the paper's count)."""
    norm = {id(p) for m in model.modules() if isinstance(m, _NORM_LAYERS)
            for p in m.parameters(recurse=False)}
    return sum(p.numel() for p in model.parameters() if id(p) not in norm)


@dataclass
class Table8Row:
    """One model: paper figures and ours."""

    name: str
    paper_gmacs: float
    paper_mparams: float
    macs: int
    params: int

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6

    @property
    def macs_diff(self) -> float:
        """Relative difference to the paper (0.01 = 1 % more than the paper)."""
        return self.gmacs / self.paper_gmacs - 1

    @property
    def params_diff(self) -> float:
        return self.mparams / self.paper_mparams - 1


def table8_rows(names: Optional[Sequence[str]] = None,
                input_size: Tuple[int, int] = (224, 224)) -> List[Table8Row]:
    """Build each model and count it (a few seconds per model on a CPU)."""
    rows = []
    for name in names or PAPER_TABLE8:
        model = build_classifier(name)
        paper_gmacs, paper_mparams = PAPER_TABLE8[name]
        rows.append(Table8Row(name, paper_gmacs, paper_mparams,
                              count_macs(model, input_size), count_params(model)))
    return rows


def format_table8(rows: Sequence[Table8Row], input_size: Tuple[int, int] = (224, 224)) -> str:
    """Markdown table, paper and ours side by side."""
    lines = [
        f'Table 8, ImageNet classifiers at {input_size[0]}x{input_size[1]}: paper vs vtseg',
        'GMACs: conv/linear/matmul/einsum multiply-accumulates (mmengine FlopAnalyzer), '
        'normalisation layers not counted.',
        'M params: BN/LayerNorm affine parameters not counted (the paper\'s ResNet counts '
        'match only this way).',
        '',
        '| model | paper GMACs | ours GMACs | diff | paper M params | ours M params | diff |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for r in rows:
        lines.append(f'| {r.name} | {r.paper_gmacs:.3f} | {r.gmacs:.3f} | '
                     f'{r.macs_diff * 100:+.1f}% | {r.paper_mparams:.1f} | {r.mparams:.2f} | '
                     f'{r.params_diff * 100:+.1f}% |')
    notes = [NOTES[r.name] for r in rows
             if r.name in NOTES and max(abs(r.macs_diff), abs(r.params_diff)) > 0.05]
    if notes:
        lines += [''] + notes
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', choices=list(PAPER_TABLE8),
                        default=['R18', 'VT-R18', 'R34', 'VT-R34', 'R50', 'VT-R50', 'R101',
                                 'VT-R101'], help='rows to compute (default: all)')
    parser.add_argument('--input-size', type=int, nargs=2, default=[224, 224],
                        metavar=('H', 'W'))
    args = parser.parse_args(argv)
    size = (args.input_size[0], args.input_size[1])
    print(format_table8(table8_rows(args.models, size), size))


if __name__ == '__main__':
    main()
