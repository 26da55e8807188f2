"""Semantic segmentation with an exported ``.onnx`` file in ONNX Runtime, as mmseg predicts.

:class:`OnnxSegmentor` reads the :class:`~vtseg.deploy.spec.DeploySpec` stored in the
file and runs mmseg's whole-image inference around the graph: decode the image as mmcv,
resize as the test pipeline, pad as the data preprocessor, run the graph (channel flip,
mean/std, backbone, neck, head, resize to the input), crop the padding, resize the logits
to the original image size and take the argmax. :func:`infer_images` does it for a file
or a folder and writes label maps and colour overlays. Neither needs PyTorch or mmseg.
"""
from __future__ import annotations

import os
import os.path as osp
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from .processing import (
    check_image,
    overlay,
    pad_image,
    read_image,
    resize_image,
    resize_logits,
    write_label_map,
)
from .spec import DeployError, DeploySpec

__all__ = ['ort_session', 'OnnxSegmentor', 'Prediction', 'InferenceReport', 'infer_images',
           'list_images', 'IMAGE_SUFFIXES']

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp')
_INSTALL = 'install the deploy extra: pip install -e ".[deploy]"'


def _import_ort():
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError as err:
        raise DeployError(f'onnxruntime is not installed; {_INSTALL}') from err
    return ort


def ort_session(path: str, *, threads: Optional[int] = None, spinning: Optional[bool] = None,
                spin_after_run: bool = False,
                providers: Sequence[str] = ('CPUExecutionProvider',),
                optimization: str = 'all') -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` with CPU-friendly options.

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (``None``: ONNX Runtime's default, one per physical core).
            Inter-op parallelism is off (one graph node at a time, each using the threads).
        spinning: let idle intra-op threads spin (ONNX Runtime's default, lowest latency
            on a dedicated machine); ``False`` makes them sleep, kinder to shared machines.
        spin_after_run: keep the threads spinning after a run has returned, as ONNX
            Runtime does by default. Off (``session.force_spinning_stop``), they spin
            only while a run is in progress, so the caller's own work between runs (pre-
            and post-processing, other models) is not left fewer cores.
        providers: execution providers, in order of preference.
        optimization: graph optimisation level ``disable``, ``basic``, ``extended`` or
            ``all``.

    Raises:
        DeployError: the file is missing, or ONNX Runtime cannot load it (naming the file,
            ONNX Runtime's reason and the fix).
    """
    ort = _import_ort()
    if not osp.isfile(path):
        raise DeployError(f'ONNX model {path!r} does not exist; export one with '
                          'tools/export_onnx.py CONFIG CHECKPOINT --out MODEL.onnx')
    levels = {'disable': ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              'basic': ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              'extended': ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              'all': ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise DeployError(f'optimization must be one of {sorted(levels)}, got '
                          f'{optimization!r}')
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[optimization]
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    if threads is not None:
        if threads < 1:
            raise DeployError(f'threads must be >= 1, got {threads}')
        opts.intra_op_num_threads = int(threads)
    if spinning is not None:
        opts.add_session_config_entry('session.intra_op.allow_spinning',
                                      '1' if spinning else '0')
    if not spin_after_run:
        opts.add_session_config_entry('session.force_spinning_stop', '1')
    available = set(ort.get_available_providers())
    chosen = [p for p in providers if p in available] or ['CPUExecutionProvider']
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=chosen)
    except Exception as err:  # onnxruntime raises its own pybind exception types
        raise DeployError(
            f'ONNX Runtime {ort.__version__} cannot load {path!r}: {str(err).strip()}. '
            'Re-export it with tools/export_onnx.py (opset 17), or install the onnxruntime '
            'version pinned in the deploy extra') from err


@dataclass
class Prediction:
    """One image's result: ``labels`` (H, W) int64 at the original size and, for a logits
    export, ``logits`` (K, H, W) float32; ``run_s`` is the graph's time, ``total_s``
    includes pre- and post-processing."""

    labels: np.ndarray
    logits: Optional[np.ndarray]
    run_s: float
    total_s: float


class OnnxSegmentor:
    """A segmentor exported by :func:`vtseg.deploy.export_segmentor`, run in ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        threads, spinning, spin_after_run: see :func:`ort_session`.

    Raises:
        DeployError: no vtseg metadata, or a graph mode that gives no per-pixel output.
    """

    def __init__(self, path: str, *, threads: Optional[int] = None,
                 spinning: Optional[bool] = None, spin_after_run: bool = False) -> None:
        self.path = path
        self.session = ort_session(path, threads=threads, spinning=spinning,
                                   spin_after_run=spin_after_run)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec = DeploySpec.from_metadata(meta, source=repr(path))
        if self.spec.mode == 'tensor':
            raise DeployError(f'{path!r} was exported with mode="tensor" (the head output at '
                              '1/4 resolution) for benchmarking; export with --output logits '
                              'or labels for inference')
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_hw = [d if isinstance(d, int) else None for d in inp.shape[2:]]

    def _check_size(self, hw) -> None:
        fixed = self.input_hw
        if all(d is not None for d in fixed) and list(hw) != fixed:
            raise DeployError(
                f'{self.path!r} was exported for a fixed {fixed[0]}x{fixed[1]} input but this '
                f'image is {hw[0]}x{hw[1]} after the test pipeline\'s resize and padding; '
                f're-export with --dynamic, or with --shape {hw[0]} {hw[1]}')

    def read(self, path: str) -> np.ndarray:
        """Decode an image file as the test pipeline's ``LoadImageFromFile``."""
        return read_image(path, self.spec.color_type)

    def predict(self, image: Union[str, np.ndarray], name: Optional[str] = None) -> Prediction:
        """Segment one image: a file path, or an (H, W, 3) BGR array as mmcv loads it
        (``name`` labels it in error messages)."""
        t0 = time.perf_counter()
        if isinstance(image, str):
            name = name or image
            img = self.read(image)
        else:
            name, img = name or 'image', image
        img = check_image(img, name)
        ori_hw = img.shape[:2]
        resized = resize_image(img, self.spec.resize)
        padded, (h, w) = pad_image(resized, self.spec)
        self._check_size(padded.shape[:2])
        x = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        t1 = time.perf_counter()
        try:
            out = self.session.run(None, {self.input_name: x})[0]
        except Exception as err:
            raise DeployError(
                f'ONNX Runtime failed on {name} ({x.shape[2]}x{x.shape[3]} after resize and '
                f'padding): {str(err).strip()}. If the model needs sizes divisible by its '
                'output stride, resize the image or export with a data_preprocessor '
                'test_cfg=dict(size_divisor=32)') from err
        run_s = time.perf_counter() - t1
        if self.spec.mode == 'labels':
            labels = out[0, :h, :w]
            if (h, w) != tuple(ori_hw):
                raise DeployError('a labels export cannot resize to the original size; this '
                                  'should have been refused at export')
            logits = None
        else:
            logits = resize_logits(out[0, :, :h, :w], ori_hw, self.spec.align_corners)
            labels = logits.argmax(0)
        return Prediction(labels.astype(np.int64), logits, run_s, time.perf_counter() - t0)

    __call__ = predict


def list_images(source: str) -> List[str]:
    """``source`` if it is a file, else the images in the folder (sorted, not recursive)."""
    if osp.isfile(source):
        return [source]
    if not osp.isdir(source):
        raise DeployError(f'{source!r} is neither an image file nor a folder')
    files = sorted(osp.join(source, f) for f in os.listdir(source)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise DeployError(f'folder {source!r} has no images ({", ".join(IMAGE_SUFFIXES)})')
    return files


@dataclass
class InferenceReport:
    """Per-image times of :func:`infer_images` (seconds) and the files written."""

    images: List[str] = field(default_factory=list)
    run_s: List[float] = field(default_factory=list)
    total_s: List[float] = field(default_factory=list)
    written: Dict[str, List[str]] = field(default_factory=lambda: {'pred': [], 'vis': []})

    def summary(self) -> str:
        n = len(self.images)
        if not n:
            return 'no images'
        run, total = np.median(self.run_s) * 1e3, np.median(self.total_s) * 1e3
        return (f'{n} image(s): ONNX Runtime {run:.1f} ms per image (median), '
                f'{total:.1f} ms with pre- and post-processing')


def infer_images(model: Union[str, OnnxSegmentor], source: str, out_dir: Optional[str] = None,
                 *, threads: Optional[int] = None, overlays: bool = True,
                 log=None) -> InferenceReport:
    """Segment a file or every image of a folder with an exported model.

    Writes ``out_dir/pred/<stem>.png`` (class indices, as ``tools/test.py --out``) and
    ``out_dir/vis/<stem>.png`` (the dataset palette over the image, as mmseg's visualizer).

    Args:
        model: ``.onnx`` path or an :class:`OnnxSegmentor`.
        source: image file or folder.
        out_dir: where to write; ``None`` writes nothing (timing only).
        threads: ONNX Runtime intra-op threads (when ``model`` is a path).
        overlays: also write the colour overlays.
        log: called with one line per image.
    """
    seg = model if isinstance(model, OnnxSegmentor) else OnnxSegmentor(model, threads=threads)
    report = InferenceReport()
    for path in list_images(source):
        t0 = time.perf_counter()
        img = seg.read(path)
        pred = seg.predict(img, name=path)
        pred.total_s = time.perf_counter() - t0  # decoding included
        report.images.append(path)
        report.run_s.append(pred.run_s)
        report.total_s.append(pred.total_s)
        stem = osp.splitext(osp.basename(path))[0]
        if out_dir is not None:
            dst = osp.join(out_dir, 'pred', f'{stem}.png')
            write_label_map(dst, pred.labels)
            report.written['pred'].append(dst)
            if overlays:
                import cv2  # noqa: PLC0415

                vis = overlay(check_image(img, path), pred.labels, seg.spec.palette)
                dst = osp.join(out_dir, 'vis', f'{stem}.png')
                os.makedirs(osp.dirname(dst), exist_ok=True)
                cv2.imwrite(dst, vis)
                report.written['vis'].append(dst)
        if log is not None:
            h, w = pred.labels.shape
            log(f'{path}: {h}x{w}, ONNX Runtime {pred.run_s * 1e3:.1f} ms, total '
                f'{pred.total_s * 1e3:.1f} ms')
    return report
