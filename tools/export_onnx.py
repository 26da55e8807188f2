"""Export a trained segmentor to ONNX, with its preprocessing, classes and palette.

The graph takes raw pixels (float32 (N, 3, H, W), BGR as OpenCV decodes, 0-255) and gives
per-pixel logits (or labels); the data preprocessor's mean/std and channel flip are in the
graph, the test pipeline's resize and padding in the file's metadata
(``tools/infer_onnx.py`` applies them). The export is checked against PyTorch on the
first test image (or ``--image``) and refused when they differ. Examples::

    python tools/export_onnx.py configs/demo/vtfpn_r18_vtdemo.py \
        work_dirs/demo/vtfpn/iter_1000.pth --out work_dirs/vtfpn_demo.onnx --dynamic
    python tools/export_onnx.py configs/vtfpn_r50_lip.py CHECKPOINT --out lip.onnx --shape 473 473
"""
import argparse
import sys

from mmengine.config import DictAction

import vtseg  # noqa: F401  (registers vtseg; checkpoints load under torch>=2.6)
from vtseg.deploy import DeployError, export_segmentor


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export a segmentor to ONNX')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint (.pth) trained with that config')
    parser.add_argument('--out', required=True, help='ONNX file to write')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='graph input size after the test resize and padding (default: '
                        "the pipeline's fixed resize, else crop_size, else 512x512)")
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch, height and width')
    parser.add_argument('--output', choices=('logits', 'labels'), default='logits',
                        help='per-pixel class logits (default) or the label map')
    parser.add_argument('--image', help='image to verify the export on (default: the first '
                        'test image)')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest max|ORT - PyTorch| / max|PyTorch| of the logits')
    parser.add_argument('--no-verify', action='store_true', help='skip the check')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings (those the checkpoint was trained '
                        'with), key=value')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        result = export_segmentor(args.config, args.checkpoint, args.out, shape=args.shape,
                                  dynamic=args.dynamic, mode=args.output,
                                  cfg_options=args.cfg_options, image=args.image,
                                  verify=not args.no_verify, tolerance=args.tolerance)
    except (DeployError, FileNotFoundError, KeyError, RuntimeError) as err:
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == '__main__':
    sys.exit(main())
