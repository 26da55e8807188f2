"""mmseg 1.x's ``tools/train.py`` command line (see :mod:`mmseg_cli`): config,
``--work-dir``, ``--resume``, ``--cfg-options``, then ``runner.train()``."""
import os

from mmseg_cli import build_runner, parser

if __name__ == '__main__':
    p = parser('Train a segmentor')
    p.add_argument('--resume', action='store_true')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = p.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    build_runner(args, resume=args.resume).train()
