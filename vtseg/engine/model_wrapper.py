"""A DistributedDataParallel wrapper for CPU processes (gloo)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from torch import nn

__all__ = ['CPUDistributedDataParallel']


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """:class:`~mmengine.model.MMDistributedDataParallel` for modules that live on the CPU.

    mmengine's Runner always passes ``device_ids=[LOCAL_RANK]`` to a DDP wrapper, which
    DDP rejects for CPU modules, and SyncBN layers refuse CPU tensors. This wrapper drops
    ``device_ids`` (DDP then keeps the module where it is) and turns SyncBN back into
    BatchNorm, so each process normalises with its own batch statistics, as single-process
    CPU training does. Gradients are still all-reduced, over gloo.
    :func:`vtseg.engine.setup_distributed` selects it when CUDA is not available.

    Args:
        module: the model (on the CPU).
        device_ids: ignored; accepted because the Runner always passes it.
        detect_anomalous_params: as in MMDistributedDataParallel.
        **kwargs: passed to ``torch.nn.parallel.DistributedDataParallel``.
    """

    def __init__(self, module: nn.Module, *, device_ids: Optional[Sequence[Any]] = None,
                 detect_anomalous_params: bool = False, **kwargs) -> None:
        kwargs.pop('output_device', None)
        module = revert_sync_batchnorm(module)
        super().__init__(module=module, detect_anomalous_params=detect_anomalous_params,
                         device_ids=None, **kwargs)
