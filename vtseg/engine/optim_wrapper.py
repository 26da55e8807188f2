"""Mixed precision that also works on the CPU: bfloat16 autocast."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.runner.amp import autocast
from torch import nn

__all__ = ['BF16OptimWrapper']


@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):
    """An :class:`~mmengine.optim.OptimWrapper` whose forward runs under bfloat16 autocast.

    mmengine's ``AmpOptimWrapper`` refuses to start without a GPU (or NPU/MLU/MUSA) because
    it pairs float16 with a CUDA loss scaler. bfloat16 keeps float32's exponent range, so it
    needs no loss scaling, and ``torch.autocast`` supports it on the CPU (and on recent
    GPUs). Parameters, gradients and optimizer state stay float32; only the operators
    autocast lists run in bfloat16. ``tools/train.py --amp`` selects this wrapper when
    CUDA is not available.

    Args:
        *args, **kwargs: as for :class:`~mmengine.optim.OptimWrapper`.
    """

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        param = next(model.parameters(), None)
        device_type = param.device.type if param is not None else 'cpu'
        with super().optim_context(model), autocast(device_type=device_type,
                                                    dtype=torch.bfloat16):
            yield
