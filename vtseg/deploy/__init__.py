"""Deployment: the inference optimisation step, ONNX export, ONNX Runtime inference.

Public API::

    optimize_for_inference(model, compile=False)  # conv-BN folding, channels_last,
                                                  # few-rows linear layers, compile
    export_onnx(module, path, shape=(H, W) | inputs=..., dynamic=False, mode='logits')
    export_segmentor(config, checkpoint, out, shape=None, dynamic=False)  # + metadata, check
    ort_session(path, threads=None)          # onnxruntime.InferenceSession, CPU options
    OnnxSegmentor(path).predict(image)       # mmseg's whole-image inference, without torch
    infer_images(path, source, out_dir)      # label maps and overlays of a file or folder

``onnx`` and ``onnxruntime`` come with the ``deploy`` extra (``pip install -e ".[deploy]"``);
they are imported when first used. See ``docs/deploy.md``.
"""
from .few_rows_linear import FewRowsLinear, use_few_rows_linear
from .onnx_export import OPSET, ExportResult, SegmentorGraph, export_onnx, export_segmentor
from .optimize import fold_conv_bn, optimize_for_inference
from .ort_inference import InferenceReport, OnnxSegmentor, Prediction, infer_images, ort_session
from .spec import DeployError, DeploySpec
from .verify import Verification, relative_error, verify_export

__all__ = ['OPSET', 'DeployError', 'DeploySpec', 'ExportResult', 'FewRowsLinear',
           'InferenceReport', 'OnnxSegmentor', 'Prediction', 'SegmentorGraph', 'Verification',
           'export_onnx', 'export_segmentor', 'fold_conv_bn', 'infer_images',
           'optimize_for_inference', 'ort_session', 'relative_error', 'use_few_rows_linear',
           'verify_export']
