"""Argument parsing shared by vtseg's command lines: clear messages, exit status 2.

:class:`ArgumentParser` is argparse's with ``--debug`` added, errors printed as one
``error:`` line, and :meth:`ArgumentParser.run` to parse and run a tool's body under
:func:`~vtseg.cli.errors.run_main`. The ``type=`` functions below reject a path or a
number that cannot work before anything is built, naming the argument.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import sys
from typing import Callable, NoReturn, Optional, Sequence

from .errors import DEBUG_ENV, EXIT_ERROR, run_main

__all__ = ['ArgumentParser', 'CHECKPOINT_SUFFIXES', 'CONFIG_SUFFIXES', 'check_work_dir',
           'checkpoint_file', 'config_file', 'device', 'existing_path', 'looks_like_checkpoint',
           'positive_int', 'sniff_file', 'work_dir']

CONFIG_SUFFIXES = ('.py', '.json', '.yaml', '.yml')


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with ``--debug`` and vtseg's error style.

    Example::

        parser = ArgumentParser(description='...')
        parser.add_argument('config', type=config_file)
        sys.exit(parser.run(lambda args: work(args)))
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument('--debug', action='store_true',
                          help=f'show the traceback of an error (or set {DEBUG_ENV}=1)')

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f'error: {message} (see --help)', file=sys.stderr, flush=True)
        sys.exit(EXIT_ERROR)

    def run(self, body: Callable[[argparse.Namespace], Optional[int]],
            argv: Optional[Sequence[str]] = None) -> int:
        """Parse ``argv`` (default ``sys.argv[1:]``) and run ``body(args)``.

        Returns:
            The exit status: the body's, 2 for a usage or other error (one ``error:``
            line), 130 after Ctrl-C.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        return run_main(lambda: body(self.parse_args(argv)), debug='--debug' in argv)


def existing_path(path: str) -> str:
    """``type=``: a file or folder that exists."""
    if not osp.exists(path):
        raise argparse.ArgumentTypeError(f'{path!r} does not exist')
    return path


def config_file(path: str) -> str:
    """``type=``: an existing mmengine config file (``.py``, ``.json``, ``.yaml``)."""
    if osp.isdir(path):
        raise argparse.ArgumentTypeError(f'{path!r} is a folder, not a config file; pass '
                                         'e.g. configs/demo/fpn_r18_vtdemo.py')
    if not osp.isfile(path):
        raise argparse.ArgumentTypeError(f'config file {path!r} does not exist; pass the '
                                         'path of a config, e.g. '
                                         'configs/demo/fpn_r18_vtdemo.py')
    if not path.endswith(CONFIG_SUFFIXES):
        raise argparse.ArgumentTypeError(
            f'{path!r} is not a config file (expected {", ".join(CONFIG_SUFFIXES)}); the '
            'config comes first, e.g. tools/test.py CONFIG CHECKPOINT')
    return path


def check_work_dir(path: str, what: str = 'work_dir') -> str:
    """Raise ``ValueError`` unless ``path`` is a folder that exists or can be created."""
    if osp.exists(path) and not osp.isdir(path):
        raise ValueError(f'{what} {path!r} is a file, not a folder; pass a folder for logs '
                         'and checkpoints (it is created if needed)')
    parent = osp.abspath(path)
    while not osp.exists(parent):
        parent = osp.dirname(parent)
    if not osp.isdir(parent):
        raise ValueError(f'{what} {path!r} cannot be created: {parent!r} is a file')
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f'{what} {path!r} cannot be created: no permission to write in '
                         f'{parent!r}')
    return path


def work_dir(path: str) -> str:
    """``type=``: a folder that exists or can be created (:func:`check_work_dir`)."""
    try:
        return check_work_dir(path, 'folder')
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def positive_int(text: str) -> int:
    """``type=``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return value


CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.ckpt', '.bin', '.pkl')
_IMAGE_MAGIC = ((b'\xff\xd8\xff', 'a JPEG image'), (b'\x89PNG', 'a PNG image'),
                (b'GIF8', 'a GIF image'), (b'BM', 'a BMP image'), (b'II*\x00', 'a TIFF image'),
                (b'MM\x00*', 'a TIFF image'))


def sniff_file(path: str) -> str:
    """What the first bytes of ``path`` say it is: ``'checkpoint'`` (a zip, as
    ``torch.save`` writes, or a pickle), ``'empty'``, ``'a PNG image'``..., or ``'other'``."""
    with open(path, 'rb') as f:
        head = f.read(16)
    if not head:
        return 'empty'
    if head.startswith(b'PK\x03\x04') or (head[:1] == b'\x80' and 2 <= head[1] <= 5):
        return 'checkpoint'
    if head.startswith(b'RIFF') and head[8:12] == b'WEBP':
        return 'a WEBP image'
    for magic, what in _IMAGE_MAGIC:
        if head.startswith(magic):
            return what
    return 'other'


def looks_like_checkpoint(path: str) -> bool:
    """A file whose name ends like a checkpoint or whose bytes start like one."""
    if path.lower().endswith(CHECKPOINT_SUFFIXES):
        return True
    return osp.isfile(path) and sniff_file(path) == 'checkpoint'


def checkpoint_file(path: str) -> str:
    """``type=``: an existing, non-empty file that starts like a PyTorch checkpoint.

    Only the first bytes are read; whether the whole file loads is checked when it is
    loaded.
    """
    if osp.isdir(path):
        raise argparse.ArgumentTypeError(f'checkpoint {path!r} is a folder, not a file')
    if not osp.isfile(path):
        raise argparse.ArgumentTypeError(f'checkpoint {path!r} does not exist')
    kind = sniff_file(path)
    if kind == 'empty':
        raise argparse.ArgumentTypeError(f'checkpoint {path!r} is an empty file')
    if kind != 'checkpoint':
        what = kind if kind != 'other' else 'not a PyTorch checkpoint (no zip or pickle data)'
        raise argparse.ArgumentTypeError(
            f'{path!r} is {what}, not a checkpoint; pass a .pth file written by '
            'tools/train.py')
    return path


def device(text: str) -> str:
    """``type=``: a torch device this machine has (``cpu``, ``cuda``, ``cuda:1``...)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use e.g. 'cpu' or "
                                         "'cuda:0'") from None
    if dev.type == 'cuda':
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError(f'{text!r}: this machine has no CUDA device; '
                                             'use --device cpu')
        if dev.index is not None and dev.index >= count:
            raise argparse.ArgumentTypeError(f'{text!r}: this machine has {count} CUDA '
                                             f'device(s), cuda:0..cuda:{count - 1}')
    return text
