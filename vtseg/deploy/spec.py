"""What an exported segmentor needs around its graph, stored in the ONNX file's metadata.

An exported graph maps raw pixels to class scores: its input is the image as mmcv loads it
(``float32``, ``(N, 3, H, W)``, channel order of the file as decoded by OpenCV, i.e. BGR,
values 0-255), and mmseg's data preprocessor (channel flip, mean, std) is the graph's first
step. What cannot be a fixed part of a graph with dynamic height and width is recorded in
the file's ``metadata_props`` as a :class:`DeploySpec`: the test pipeline's resize, the
data preprocessor's test-time padding, the interpolation back to the original size, class
names and palette. :mod:`vtseg.deploy.ort_inference` applies it, so inference needs
the ``.onnx`` file only.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ['DeployError', 'DeploySpec', 'METADATA_FORMAT', 'OUTPUT_MODES']

#: Version of the metadata layout written by :meth:`DeploySpec.to_metadata`.
METADATA_FORMAT = '1'
#: ``logits``: (N, K, H, W) class scores at the input size; ``labels``: (N, H, W) int64
#: argmax; ``tensor``: the decode head's raw output (N, K, H/4, W/4), as mmseg's
#: ``model(inputs, mode='tensor')``.
OUTPUT_MODES = ('tensor', 'logits', 'labels')


class DeployError(ValueError):
    """An export or inference that cannot give mmseg's result; the message says why and
    what to do."""


@dataclass
class DeploySpec:
    """Everything around the graph that reproduces mmseg's whole-image inference.

    Attributes:
        mode: graph output, one of :data:`OUTPUT_MODES`.
        mean, std: the data preprocessor's normalisation (applied in the graph, after the
            channel flip; ``None``: none). Recorded for reference.
        channel_flip: the graph reverses the channel order first (``bgr_to_rgb`` or
            ``rgb_to_bgr``). Recorded for reference.
        input_channel_order: channel order the graph expects (``bgr``: as OpenCV decodes).
        color_type: how the test pipeline's ``LoadImageFromFile`` decodes files
            (``color``, ``grayscale``, ``unchanged``, ...).
        resize: the test pipeline's resize, ``None`` or ``{'type': 'Resize', 'scale': [w, h],
            'keep_ratio': bool}`` or ``{'type': 'ResizeShortestEdge', 'scale': s,
            'max_size': m}`` (bilinear, as mmcv).
        pad_size: pad the bottom/right of the (resized) image to ``[h, w]``
            (``data_preprocessor.test_cfg.size``), or ``None``.
        size_divisor: pad the bottom/right to a multiple of this
            (``data_preprocessor.test_cfg.size_divisor``), or ``None``.
        pad_raw: per input channel, the raw pixel value whose normalised value is the data
            preprocessor's ``pad_val`` (mmseg pads after normalisation).
        align_corners: of the bilinear resize of the logits to the original image size.
        classes, palette: class names and RGB colours of the dataset.
        input_shape: ``[H, W]`` of the export's example input.
        dynamic: height, width and batch of the input are dynamic.
        num_classes: K.
        source: config, checkpoint and versions the file was exported from.
    """

    mode: str = 'logits'
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    channel_flip: bool = False
    input_channel_order: str = 'bgr'
    color_type: str = 'color'
    resize: Optional[Dict[str, Any]] = None
    pad_size: Optional[List[int]] = None
    size_divisor: Optional[int] = None
    pad_raw: List[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    align_corners: bool = False
    classes: List[str] = field(default_factory=list)
    palette: List[List[int]] = field(default_factory=list)
    input_shape: List[int] = field(default_factory=list)
    dynamic: bool = False
    num_classes: int = 0
    source: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in OUTPUT_MODES:
            raise DeployError(f'output mode {self.mode!r} is not one of {OUTPUT_MODES}')

    def to_metadata(self) -> Dict[str, str]:
        """``metadata_props`` entries: ``vtseg.<field>`` -> JSON text."""
        props = {f'vtseg.{k}': json.dumps(v) for k, v in asdict(self).items()}
        props['vtseg.format'] = METADATA_FORMAT
        return props

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = 'model') -> DeploySpec:
        """Read the entries written by :meth:`to_metadata`.

        Raises:
            DeployError: the file was not exported by vtseg, or by an incompatible version.
        """
        fmt = props.get('vtseg.format')
        if fmt is None:
            raise DeployError(f'{source} has no vtseg metadata (no "vtseg.format" entry in '
                              'its metadata_props): export it with tools/export_onnx.py, which '
                              'records the preprocessing, classes and palette')
        if fmt != METADATA_FORMAT:
            raise DeployError(f'{source} has vtseg metadata format {fmt!r}, this vtseg reads '
                              f'{METADATA_FORMAT!r}; re-export it with this version')
        kwargs = {}
        for f in fields(cls):
            key = f'vtseg.{f.name}'
            if key in props:
                kwargs[f.name] = json.loads(props[key])
        return cls(**kwargs)

    def padded_shape(self, shape: Sequence[int]) -> Tuple[int, int]:
        """(H, W) after the data preprocessor's test-time padding of an (h, w) image, as
        mmseg's ``stack_batch``: to ``pad_size`` if given, else to the next multiple of
        ``size_divisor``."""
        h, w = int(shape[0]), int(shape[1])
        if self.pad_size is not None:
            return max(h, self.pad_size[0]), max(w, self.pad_size[1])
        if self.size_divisor and self.size_divisor > 1:
            d = self.size_divisor
            return -(-h // d) * d, -(-w // d) * d
        return h, w
