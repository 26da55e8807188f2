"""The paper's FLOPs tables (Tables 9 and 10) next to what vtseg's configs measure.

FLOPs are multiply-accumulates counted by :class:`mmengine.analysis.FlopAnalyzer` (one
fused multiply-add = one FLOP, the paper's convention), for one image at the paper's input
size: 800x1216 for COCO-Stuff (Table 9) and 473x473 for LIP (Table 10). "FPN FLOPs" is the
neck alone; "total" is backbone + neck + decode head.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .config_model import build_model_from_config
from .flops import Complexity, model_complexity

__all__ = ['PaperRow', 'PAPER_TABLES_9_10', 'RowResult', 'measure_paper_tables',
           'format_paper_tables', 'relative_diff']


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table 9 or 10, as printed in the paper (not measured here).

    Attributes:
        table: 9 (COCO-Stuff) or 10 (LIP).
        model: the row label as printed, e.g. ``'R-50 VT-FPN'``.
        neck: ``'fpn'`` or ``'vtfpn'``.
        depth: ResNet depth.
        dataset: the dataset part of vtseg's config names.
        input_shape: ``(H, W)`` the paper counts FLOPs at.
        total_gflops: the paper's total FLOPs, in G (1e9) multiply-accumulates.
        neck_gflops: the paper's "FPN FLOPs" (the neck), in G.
        miou: the paper's mIoU on the validation set.
    """

    table: int
    model: str
    neck: str
    depth: int
    dataset: str
    input_shape: Tuple[int, int]
    total_gflops: float
    neck_gflops: float
    miou: float

    @property
    def config_name(self) -> str:
        """File name of the vtseg config that reproduces this row."""
        return f'{self.neck}_r{self.depth}_{self.dataset}.py'


_COCO, _LIP = (800, 1216), (473, 473)

#: The paper's values (Wu et al., 2020, arXiv 2006.03677 v4, Tables 9 and 10), copied from
#: the paper. Nothing here is measured by vtseg.
PAPER_TABLES_9_10: Tuple[PaperRow, ...] = (
    PaperRow(9, 'R-50 FPN', 'fpn', 50, 'coco-stuff164k', _COCO, 159, 55.1, 40.78),
    PaperRow(9, 'R-50 VT-FPN', 'vtfpn', 50, 'coco-stuff164k', _COCO, 113, 8.5, 41.00),
    PaperRow(9, 'R-101 FPN', 'fpn', 101, 'coco-stuff164k', _COCO, 231, 55.1, 41.51),
    PaperRow(9, 'R-101 VT-FPN', 'vtfpn', 101, 'coco-stuff164k', _COCO, 185, 8.5, 41.50),
    PaperRow(10, 'R50 FPN', 'fpn', 50, 'lip', _LIP, 37.1, 12.8, 47.04),
    PaperRow(10, 'R50 VT-FPN', 'vtfpn', 50, 'lip', _LIP, 26.4, 2.0, 47.39),
    PaperRow(10, 'R101 FPN', 'fpn', 101, 'lip', _LIP, 54.4, 12.8, 47.35),
    PaperRow(10, 'R101 VT-FPN', 'vtfpn', 101, 'lip', _LIP, 43.6, 2.0, 47.58),
)

_TABLE_TITLES = {9: 'Table 9, COCO-Stuff 164k', 10: 'Table 10, LIP'}


@dataclass
class RowResult:
    """A paper row and what vtseg's config measures at the same input size."""

    row: PaperRow
    config: str
    complexity: Complexity

    @property
    def total_gflops(self) -> float:
        return self.complexity.flops[''] / 1e9

    @property
    def neck_gflops(self) -> float:
        return self.complexity.flops['neck'] / 1e9


def relative_diff(ours: float, paper: float) -> float:
    """``(ours - paper) / paper`` in percent."""
    return 100.0 * (ours - paper) / paper


def measure_paper_tables(config_dir: Union[str, Path] = 'configs',
                         rows: Sequence[PaperRow] = PAPER_TABLES_9_10, *,
                         device: str = 'cpu',
                         progress: Optional[Callable[[str], None]] = None) -> List[RowResult]:
    """Build each row's model from ``config_dir`` and count it at the paper's input size.

    Pretrained weights are not loaded (FLOPs and parameters do not depend on them).

    Args:
        config_dir: folder holding the ``{fpn,vtfpn}_r{50,101}_{dataset}.py`` configs.
        rows: paper rows to measure.
        device: device to run the counting forward pass on.
        progress: called with a short message before each model (e.g. ``print``).
    """
    config_dir = Path(config_dir)
    missing = [r.config_name for r in rows if not (config_dir / r.config_name).is_file()]
    if missing:
        raise FileNotFoundError(f'{config_dir}/ lacks the configs {missing}; pass the folder '
                                'that holds them with --config-dir')
    results = []
    for row in rows:
        path = config_dir / row.config_name
        if progress is not None:
            progress(f'counting {path} at {row.input_shape[0]}x{row.input_shape[1]}')
        model, _, _ = build_model_from_config(path, device=device)
        results.append(RowResult(row, str(path), model_complexity(model, row.input_shape)))
        del model
    return results


def _g(value: float) -> str:
    return f'{value:.3g} G' if value >= 100 else f'{value:.1f} G'


def format_paper_tables(results: Sequence[RowResult]) -> str:
    """Markdown tables: for each row the paper's value, ours and the difference."""
    lines: List[str] = [
        'FLOPs = multiply-accumulates of one image (mmengine FlopAnalyzer); paper = the value '
        'printed in Wu et al. (2020); ours = the vtseg config measured here; '
        'diff = (ours - paper) / paper.', '']
    by_table: Dict[int, List[RowResult]] = {}
    for res in results:
        by_table.setdefault(res.row.table, []).append(res)
    for table, rows in sorted(by_table.items()):
        h, w = rows[0].row.input_shape
        lines += [f'{_TABLE_TITLES.get(table, f"Table {table}")}, FLOPs at {h}x{w}', '',
                  '| model | config | total: paper | ours | diff | FPN (neck): paper | ours '
                  '| diff | params (ours) |',
                  '|---|---|---:|---:|---:|---:|---:|---:|---:|']
        for res in rows:
            r = res.row
            lines.append(
                f'| {r.model} | `{Path(res.config).name}` '
                f'| {_g(r.total_gflops)} | {res.total_gflops:.2f} G '
                f'| {relative_diff(res.total_gflops, r.total_gflops):+.1f}% '
                f'| {_g(r.neck_gflops)} | {res.neck_gflops:.2f} G '
                f'| {relative_diff(res.neck_gflops, r.neck_gflops):+.1f}% '
                f'| {res.complexity.params[""] / 1e6:.2f} M |')
        lines.append('')
    uncounted: Dict[str, int] = {}
    for res in results:
        for op, n in res.complexity.unsupported_ops.items():
            uncounted[op] = uncounted.get(op, 0) + n
    if uncounted:
        ops = ', '.join(f'{op} ({n}x)' for op, n in sorted(uncounted.items()))
        lines.append(f'Not counted by FlopAnalyzer (all models together): {ops}.')
    return '\n'.join(lines)
