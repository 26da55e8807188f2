"""mmseg's IoU metric, with the per-class IoUs in the returned metrics."""
from __future__ import annotations

from typing import Dict

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS

__all__ = ['ClassIoUMetric']


@METRICS.register_module()
class ClassIoUMetric(IoUMetric):
    """:class:`~mmseg.evaluation.IoUMetric` that also returns ``IoU.<class>`` (percent).

    mmseg's metric prints the per-class table but returns only the averages (aAcc, mIoU,
    mAcc). Returning the per-class IoUs too puts them in the metrics JSON that
    ``tools/test.py`` writes, where scripts (``tools/demo.py``) can read them. Takes the
    same arguments as ``IoUMetric``.
    """

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)  # logs the per-class table
        if self.format_only:
            return metrics
        # results: one (intersect, union, pred_area, label_area) tuple of (K,) per image.
        intersect = sum(r[0] for r in results).double().numpy()
        union = sum(r[1] for r in results).double().numpy()
        with np.errstate(divide='ignore', invalid='ignore'):
            iou = intersect / union  # NaN for classes absent from labels and predictions
        for name, value in zip(self.dataset_meta['classes'], iou):
            metrics[f'IoU.{name}'] = float(np.round(value * 100, 2))
        return metrics
