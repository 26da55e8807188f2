"""mmseg 1.x's ``tools/test.py`` command line (see :mod:`mmseg_cli`): config, checkpoint,
``--work-dir``, ``--cfg-options``, then ``runner.test()`` with ``load_from`` set."""
from mmseg_cli import build_runner, parser

if __name__ == '__main__':
    p = parser('MMSeg test (and eval) a model')
    p.add_argument('checkpoint')
    args = p.parse_args()
    build_runner(args, load_from=args.checkpoint).test()
