"""Export PyTorch modules and mmseg segmentors to ONNX (TorchScript exporter, opset 17).

* :func:`export_onnx` exports any module: a neck (inputs: its list of feature maps) or a
  whole mmseg ``EncoderDecoder``, which it wraps in :class:`SegmentorGraph` (raw pixels in;
  head output, logits at the input size, or labels out).
* :func:`export_segmentor` is ``tools/export_onnx.py``: config + checkpoint -> ``.onnx``
  with the preprocessing, classes and palette in its metadata
  (:class:`~vtseg.deploy.spec.DeploySpec`), checked against PyTorch on a real image
  (:mod:`vtseg.deploy.verify`).
"""
from __future__ import annotations

import os
import os.path as osp
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spec import OUTPUT_MODES, DeployError, DeploySpec
from .tracing import traceable

__all__ = ['SegmentorGraph', 'export_onnx', 'write_metadata', 'ExportResult',
           'export_segmentor', 'OPSET']

#: ONNX opset of every export: supported by ONNX Runtime >= 1.13 and by the TorchScript
#: exporter for every operator of the VT-FPN and FPN segmentors.
OPSET = 17


def _is_segmentor(model: nn.Module) -> bool:
    from mmseg.models.segmentors import BaseSegmentor  # noqa: PLC0415
    return isinstance(model, BaseSegmentor)


class SegmentorGraph(nn.Module):
    """An mmseg ``EncoderDecoder``'s whole-image inference as one traceable module.

    Args:
        segmentor: the ``EncoderDecoder`` (in eval mode).
        mode: ``tensor`` (decode head output, as ``segmentor(x, mode='tensor')``),
            ``logits`` (resized to the input as mmseg's ``predict_by_feat``) or ``labels``
            (their argmax).
        preprocess: apply the data preprocessor's channel flip and mean/std first (input:
            raw pixels); ``False``: the input is already normalised.

    Shape:
        - image: (N, 3, H, W) float32
        - returns (N, K, H/4, W/4) (``tensor``), (N, K, H, W) (``logits``) or (N, H, W)
          int64 (``labels``)
    """

    def __init__(self, segmentor: nn.Module, mode: str = 'logits',
                 preprocess: bool = True) -> None:
        super().__init__()
        if mode not in OUTPUT_MODES:
            raise DeployError(f'mode must be one of {OUTPUT_MODES}, got {mode!r}')
        self.segmentor = segmentor
        self.mode = mode
        self.preprocess = preprocess
        self.align_corners = bool(getattr(segmentor, 'align_corners', False))
        dp = segmentor.data_preprocessor
        self.channel_flip = bool(getattr(dp, 'channel_conversion', False))
        self.normalize = bool(getattr(dp, '_enable_normalize', False))
        if self.normalize:
            self.register_buffer('mean', dp.mean.detach().clone().view(1, -1, 1, 1))
            self.register_buffer('std', dp.std.detach().clone().view(1, -1, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        x = image
        if self.preprocess:
            if self.channel_flip:  # SegDataPreProcessor: bgr_to_rgb / rgb_to_bgr
                x = x[:, [2, 1, 0]]
            if self.normalize:
                x = (x - self.mean) / self.std
        logits = self.segmentor._forward(x)  # EncoderDecoder: decode_head(extract_feat(x))
        if self.mode == 'tensor':
            return logits
        logits = F.interpolate(logits, size=x.shape[2:], mode='bilinear',
                               align_corners=self.align_corners)
        return logits.argmax(1) if self.mode == 'labels' else logits


def _as_tuple(out: Any) -> Tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def _dynamic_axes(tensors: Sequence[Tensor], names: Sequence[str]) -> Dict[str, Dict[int, str]]:
    axes = {}
    for i, (t, name) in enumerate(zip(tensors, names)):
        ax = {0: 'batch'}
        if t.dim() >= 3:
            ax[t.dim() - 2] = f'height_{i}' if len(names) > 1 else 'height'
            ax[t.dim() - 1] = f'width_{i}' if len(names) > 1 else 'width'
        axes[name] = ax
    return axes


def write_metadata(path: str, props: Dict[str, str]) -> None:
    """Add ``props`` to the ONNX file's ``metadata_props`` (in place)."""
    import onnx  # noqa: PLC0415

    model = onnx.load(path)
    existing = {p.key: p for p in model.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.save(model, path)


def export_onnx(model: nn.Module, path: str, *, shape: Optional[Sequence[int]] = None,
                inputs: Union[Tensor, Sequence[Tensor], None] = None, dynamic: bool = False,
                mode: str = 'logits', preprocess: Optional[bool] = None,
                metadata: Optional[Dict[str, str]] = None, opset: int = OPSET) -> str:
    """Export a module to ONNX with ``torch.onnx.export(..., dynamo=False)`` and check it.

    Args:
        model: an mmseg segmentor (wrapped in :class:`SegmentorGraph`) or any module, e.g.
            a neck. Put it in eval mode first; it is run under ``torch.no_grad()``.
        path: the ``.onnx`` file to write (its folder is created).
        shape: (H, W) of a random (1, 3, H, W) example input, when ``inputs`` is not given.
        inputs: example input: a tensor, or a list of tensors for a neck (exported as one
            graph input per tensor, ``input_0`` ...).
        dynamic: batch, height and width of every 4-D input and output are dynamic.
        mode: for segmentors: ``tensor``, ``logits`` or ``labels`` (see
            :class:`SegmentorGraph`); ignored for other modules.
        preprocess: for segmentors: mean/std and channel flip in the graph (default: yes,
            except for ``mode='tensor'``, which takes normalised inputs like mmseg's
            ``mode='tensor'``).
        metadata: extra ``metadata_props`` entries.
        opset: ONNX opset version.

    Returns:
        ``path``.

    Raises:
        DeployError: the export fails or the exported file does not pass ``onnx.checker``.
    """
    try:
        import onnx  # noqa: PLC0415
    except ImportError as err:
        raise DeployError('onnx is not installed; install the deploy extra: '
                          'pip install -e ".[deploy]"') from err
    segmentor = _is_segmentor(model)
    if segmentor:
        model = SegmentorGraph(model, mode,
                               mode != 'tensor' if preprocess is None else preprocess)
    if inputs is None:
        if shape is None:
            raise DeployError('export_onnx needs shape=(H, W) or example inputs')
        inputs = torch.rand(1, 3, int(shape[0]), int(shape[1])) * 255
    is_list = isinstance(inputs, (list, tuple))
    example = list(inputs) if is_list else [inputs]
    model.eval()
    with torch.no_grad():
        outputs = _as_tuple(model(list(example) if is_list else example[0]))
    in_names = [f'input_{i}' for i in range(len(example))] if is_list else ['image']
    if segmentor:
        out_names = [mode if mode != 'tensor' else 'seg_logits']
    else:
        out_names = (['output'] if len(outputs) == 1 else
                     [f'output_{i}' for i in range(len(outputs))])
    axes = None
    if dynamic:
        axes = _dynamic_axes(example, in_names)
        axes.update(_dynamic_axes(outputs, out_names))
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    args = (list(example),) if is_list else (example[0],)
    try:
        # TracerWarnings flag Python checks on sizes (channel counts, batch == 1), which
        # are constants here; what a trace could freeze wrongly is handled by `traceable`
        # and caught by the comparison with PyTorch at other sizes (tests/deploy).
        with torch.no_grad(), traceable(model), warnings.catch_warnings():
            warnings.simplefilter('ignore', torch.jit.TracerWarning)
            torch.onnx.export(model, args, path, opset_version=opset, dynamo=False,
                              input_names=in_names, output_names=out_names,
                              dynamic_axes=axes, do_constant_folding=True)
    except Exception as err:
        raise DeployError(f'torch.onnx.export (opset {opset}) failed: {err}') from err
    if metadata:
        write_metadata(path, metadata)
    try:
        onnx.checker.check_model(path)
    except onnx.checker.ValidationError as err:
        raise DeployError(f'the exported file {path!r} is not valid ONNX: {err}') from err
    return path


# ---------------------------------------------------------------- config + checkpoint
@dataclass
class ExportResult:
    """What :func:`export_segmentor` wrote and how it was checked."""

    path: str
    spec: DeploySpec
    verification: Optional[Any]  # vtseg.deploy.verify.Verification

    def summary(self) -> str:
        size_mb = osp.getsize(self.path) / 2 ** 20
        shape = 'dynamic (batch, height, width)' if self.spec.dynamic else \
            f'fixed {self.spec.input_shape[0]}x{self.spec.input_shape[1]}'
        lines = [f'exported {self.path} ({size_mb:.1f} MiB): output {self.spec.mode}, '
                 f'{self.spec.num_classes} classes, input {shape}']
        if self.verification is not None:
            lines.append(self.verification.summary())
        return '\n'.join(lines)


def export_segmentor(config: Any, checkpoint: Optional[str], out: str, *,
                     shape: Optional[Sequence[int]] = None, dynamic: bool = False,
                     mode: str = 'logits', cfg_options: Optional[Dict[str, Any]] = None,
                     image: Optional[str] = None, verify: bool = True,
                     tolerance: float = 1e-4, threads: Optional[int] = None,
                     log: Callable[[str], None] = print) -> ExportResult:
    """Export a trained segmentor (config + checkpoint) with its inference metadata.

    Args:
        config: config file or loaded ``Config``.
        checkpoint: ``.pth`` written by ``tools/train.py``; must match the config exactly
            (``None``: the config's random initialisation, for benchmarks).
        out: ``.onnx`` file to write.
        shape: (H, W) of the graph input after the test pipeline's resize and padding
            (default: the pipeline's fixed resize, else the config's ``crop_size``, else
            512x512). A fixed-size export accepts only that size.
        dynamic: dynamic batch, height and width.
        mode: ``logits`` or ``labels`` (``tensor`` for benchmarks).
        cfg_options: ``--cfg-options`` overrides (use those the checkpoint was trained with).
        image: verification image (default: the first image of the test set, if present).
        verify: compare ONNX Runtime with PyTorch on that image and raise if they differ.
        tolerance: largest allowed ``max|ORT - PyTorch| / max|PyTorch|`` of the logits.
        threads: ONNX Runtime threads for the verification.
        log: progress lines.

    Raises:
        DeployError: unsupported model or pipeline, config/checkpoint mismatch, a shape the
            model cannot run, an export ONNX Runtime rejects, or outputs that differ.
    """
    from .from_config import load_segmentor, spec_for  # noqa: PLC0415
    from .verify import default_image, verify_export  # noqa: PLC0415

    model, cfg = load_segmentor(config, checkpoint, cfg_options)
    spec = spec_for(model, cfg, mode=mode, dynamic=dynamic, shape=shape,
                    config_name=str(getattr(cfg, 'filename', config)), checkpoint=checkpoint)
    h, w = spec.input_shape
    # The model must run at the example size; report the fix instead of a tracer error.
    with torch.no_grad():
        try:
            SegmentorGraph(model, mode)(torch.zeros(1, 3, h, w))
        except RuntimeError as err:
            raise DeployError(
                f'the model cannot run on a {h}x{w} input ({str(err).splitlines()[0]}); it '
                'needs sizes divisible by its output stride: pass --shape with multiples of '
                '32, or add data_preprocessor test_cfg=dict(size_divisor=32)') from err
    log(f'exporting {spec.source.get("config")} ({mode}, input {h}x{w}'
        f'{", dynamic" if dynamic else ""}) to {out}')
    export_onnx(model, out, shape=(h, w), dynamic=dynamic, mode=mode,
                metadata=spec.to_metadata())
    result = ExportResult(out, spec, None)
    if verify and mode != 'tensor':
        if image is None:
            image = default_image(cfg)
        result.verification = verify_export(model, cfg, out, image=image,
                                            tolerance=tolerance, threads=threads)
    return result
