"""Segment images with an exported ``.onnx`` file in ONNX Runtime (no config, no checkpoint).

Writes ``OUT_DIR/pred/<stem>.png`` (class indices) and ``OUT_DIR/vis/<stem>.png`` (the
dataset palette over the image, as mmseg's visualizer) and prints the time per image.
Whole-image inference only (see docs/deploy.md). Example::

    python tools/infer_onnx.py work_dirs/vtfpn_demo.onnx data/vtdemo/img_dir/val \
        --out-dir work_dirs/onnx_pred --threads 2
"""
import argparse
import sys

from vtseg.deploy.ort_inference import InferenceReport, infer_images
from vtseg.deploy.spec import DeployError


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='ONNX Runtime inference')
    parser.add_argument('model', help='.onnx file written by tools/export_onnx.py')
    parser.add_argument('images', help='image file or folder of images')
    parser.add_argument('--out-dir', help='where to write pred/ and vis/ (default: timing '
                        'only)')
    parser.add_argument('--threads', type=int, help='ONNX Runtime intra-op threads '
                        '(default: one per physical core)')
    parser.add_argument('--no-vis', action='store_true', help='write label maps only')
    parser.add_argument('--quiet', action='store_true', help='no line per image')
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        report: InferenceReport = infer_images(
            args.model, args.images, args.out_dir, threads=args.threads,
            overlays=not args.no_vis, log=None if args.quiet else print)
    except DeployError as err:
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 2
    print(report.summary())
    if args.out_dir:
        print(f'label maps in {args.out_dir}/pred'
              + ('' if args.no_vis else f', overlays in {args.out_dir}/vis'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
