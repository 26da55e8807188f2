"""One training step of a whole segmentor: forward, loss, backward, SGD update."""
from __future__ import annotations

import copy
from typing import Callable, Tuple

import torch
from mmengine.structures import PixelData
from mmseg.structures import SegDataSample
from torch import nn

from .forms import Form, to_channels_last

__all__ = ['make_train_step']


def _data_samples(model: nn.Module, size: Tuple[int, int], batch: int, device: str):
    num_classes = model.decode_head.num_classes
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(batch):
        labels = torch.randint(0, num_classes, (1, *size), generator=g).to(device)
        sample = SegDataSample(metainfo=dict(img_shape=size, pad_shape=size, ori_shape=size))
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample)
    return samples


def make_train_step(form: Form, model: nn.Module, size: Tuple[int, int], batch: int, *,
                    device: str = 'cpu') -> Callable[[], float]:
    """A callable running one SGD step (LIP recipe: lr 0.01, momentum 0.9, weight decay
    5e-4) of a copy of ``model`` in ``form`` on a random batch; returns the loss.

    The step is run once here (for a compiled form this compiles it).
    """
    net = form.prepare(copy.deepcopy(model)).train()
    inputs = torch.randn(batch, 3, *size, device=device)
    inputs = to_channels_last(inputs) if form.channels_last else inputs
    samples = _data_samples(model, size, batch, device)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        losses = net(inputs, samples, mode='loss')
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()
    return step
