"""The forms a user can run a model in, each prepared the same way for FPN and VT-FPN.

* ``eager``: the model as built, NCHW inputs.
* ``channels_last``: parameters and inputs in channels_last memory format.
* ``optimized``: :func:`vtseg.deploy.optimize_for_inference` (conv-BN folding +
  channels_last + few-rows linear layers), channels_last inputs.
* ``compile``: :func:`torch.compile` of the model as built, NCHW inputs.
* ``optimized+compile``: the optimisation step, then :func:`torch.compile`.
* ``onnxruntime``: the model exported to ONNX (:func:`vtseg.deploy.export_onnx`, the
  model's ``mode='tensor'`` graph) and run by ONNX Runtime (CPU only).

A form turns a built model and its example inputs into a callable that runs one
inference (``torch.no_grad``), or one training step for the :data:`TRAIN_FORMS`. The
first call of a compiled form compiles it: :func:`make_runner` makes that call itself, so
timing never includes compilation.
"""
from __future__ import annotations

import copy
import os.path as osp
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from ...deploy import optimize_for_inference

__all__ = ['FORMS', 'TRAIN_FORMS', 'Form', 'prepare', 'make_runner', 'to_channels_last']

Inputs = Union[Tensor, Sequence[Tensor]]


def to_channels_last(inputs: Inputs) -> Inputs:
    """Input tensor(s) in channels_last memory format."""
    if isinstance(inputs, Tensor):
        return inputs.contiguous(memory_format=torch.channels_last)
    return [to_channels_last(t) for t in inputs]


@dataclass(frozen=True)
class Form:
    """How to prepare a model and its inputs."""

    name: str
    prepare: Optional[Callable[[nn.Module], nn.Module]]  # None: not run by PyTorch
    channels_last: bool
    compiled: bool


def _copy_channels_last(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


FORMS: Dict[str, Form] = {f.name: f for f in [
    Form('eager', lambda m: m, channels_last=False, compiled=False),
    Form('channels_last', _copy_channels_last, channels_last=True, compiled=False),
    Form('optimized', optimize_for_inference, channels_last=True, compiled=False),
    Form('compile', lambda m: torch.compile(copy.deepcopy(m)), channels_last=False,
         compiled=True),
    Form('optimized+compile', lambda m: optimize_for_inference(m, compile=True),
         channels_last=True, compiled=True),
    Form('onnxruntime', None, channels_last=False, compiled=False),
]}

#: Forms of the training step (the optimisation step is inference-only).
TRAIN_FORMS: Dict[str, Form] = {f.name: f for f in [
    Form('eager', lambda m: m, channels_last=False, compiled=False),
    Form('channels_last', _copy_channels_last, channels_last=True, compiled=False),
    Form('compile', lambda m: torch.compile(copy.deepcopy(m)), channels_last=False,
         compiled=True),
]}


def prepare(form: Form, model: nn.Module, inputs: Inputs) -> Tuple[nn.Module, Inputs]:
    """``model`` in ``form`` (eval mode) and ``inputs`` in the memory format it takes."""
    return (form.prepare(model).eval(),
            to_channels_last(inputs) if form.channels_last else inputs)


def make_runner(form: Form, model: nn.Module, inputs: Inputs, *, is_neck: bool,
                log: Callable[[str], None] = print, label: str = '') -> Callable[[], object]:
    """A callable running one inference of ``model`` in ``form`` (compiled already)."""
    if form.name == 'onnxruntime':
        return _ort_runner(model, inputs, is_neck=is_neck, log=log, label=label)
    prepared, inputs = prepare(form, model, inputs)

    def run():
        with torch.no_grad():
            return prepared(inputs) if is_neck else prepared(inputs, mode='tensor')

    if form.compiled:
        start = time.perf_counter()
        run()
        log(f'  {label}{form.name}: compiled in {time.perf_counter() - start:.1f} s')
    return run


def _ort_runner(model: nn.Module, inputs: Inputs, *, is_neck: bool,
                log: Callable[[str], None], label: str) -> Callable[[], object]:
    """Export ``model`` (its ``mode='tensor'`` graph for a segmentor) and run it in ONNX
    Runtime with as many threads as PyTorch uses."""
    from ...deploy import export_onnx, ort_session  # noqa: PLC0415

    folder = tempfile.TemporaryDirectory(prefix='vtseg-benchmark-')
    path = osp.join(folder.name, 'model.onnx')
    start = time.perf_counter()
    export_onnx(model, path, inputs=inputs, mode='tensor')
    session = ort_session(path, threads=torch.get_num_threads())
    tensors = list(inputs) if is_neck else [inputs]
    feed = {i.name: t.detach().cpu().numpy()
            for i, t in zip(session.get_inputs(), tensors)}
    log(f'  {label}onnxruntime: exported in {time.perf_counter() - start:.1f} s')

    def run():
        return session.run(None, feed), folder  # the folder lives as long as the runner

    return run
