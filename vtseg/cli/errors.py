"""How every vtseg command line reports a failure: one ``error:`` line and exit status 2.

A mistake in a config, a dataset or a command line should read as one sentence that names
the file or the key and the fix, not as a traceback through mmengine. :func:`run_main`
runs a tool's body and turns any exception into that line (:func:`format_error`);
``--debug`` or the environment variable ``VTSEG_DEBUG=1`` prints the traceback as well.
Exit statuses: 0 done, 1 done but some inputs were skipped (the tool says which),
2 error, 130 interrupted (Ctrl-C).
"""
from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Callable, Optional, TextIO

__all__ = ['CLIError', 'DEBUG_ENV', 'EXIT_ERROR', 'EXIT_INTERRUPTED', 'EXIT_PARTIAL',
           'debug_enabled', 'format_error', 'report_error', 'run_main']

DEBUG_ENV = 'VTSEG_DEBUG'
EXIT_PARTIAL = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

_DEBUG_HINT = f'(run with --debug or {DEBUG_ENV}=1 to see the traceback)'
# torch re-raises an exception from a DataLoader worker as the same type with the whole
# worker traceback as its message; the last "<Type>: message" of it is what went wrong.
_WORKER = re.compile(r'^Caught (\w+) in (DataLoader worker process \d+)\.\s*\n'
                     r'Original Traceback', re.S)
_VTSEG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CLIError(Exception):
    """A mistake on the command line or in its inputs; the message says what to fix."""


def debug_enabled(flag: bool = False) -> bool:
    """Whether tracebacks are shown: ``--debug`` given or ``VTSEG_DEBUG`` set (not 0)."""
    return flag or os.environ.get(DEBUG_ENV, '').strip().lower() not in ('', '0', 'false',
                                                                          'no', 'off')


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]  # str(KeyError('x')) is "'x'"
    return str(exc)


def _unwrap_worker(exc: BaseException, text: str) -> str:
    match = _WORKER.match(text)
    if not match:
        return text
    name, where = match.groups()
    lines = text.rstrip().splitlines()
    # The original message starts on the last line that begins with "<module.>Type: ".
    head = re.compile(rf'^(?:[\w.]+\.)?{re.escape(name)}: ')
    for i in range(len(lines) - 1, -1, -1):
        if head.match(lines[i]):
            original = '\n'.join([head.sub('', lines[i], count=1)] + lines[i + 1:])
            return f'{original} (in {where})'
    return f'{name} in {where}: {lines[-1]}'


def _raised_by_vtseg(exc: BaseException) -> bool:
    """Whether the innermost frame is vtseg code (its messages are written for users)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    return os.path.abspath(last.tb_frame.f_code.co_filename).startswith(_VTSEG_ROOT + os.sep)


def format_error(exc: BaseException) -> str:
    """The text after ``error:`` for ``exc``.

    Messages vtseg writes (raised by vtseg code or a :class:`CLIError`) are shown as they
    are; an exception raised inside a library is shown with its type and a hint on how to
    see the traceback. An error raised in a DataLoader worker is shown as the original
    error, not as torch's copy of the worker's traceback.
    """
    text = _unwrap_worker(exc, _message(exc)).strip() or type(exc).__name__
    if isinstance(exc, CLIError) or _raised_by_vtseg(exc) or _WORKER.match(_message(exc)):
        return text
    return f'{type(exc).__name__}: {text}\n{_DEBUG_HINT}'


def report_error(exc: BaseException, *, debug: bool = False,
                 stream: Optional[TextIO] = None) -> int:
    """Print ``exc`` as one ``error:`` line (and its traceback in debug mode); return 2."""
    stream = stream if stream is not None else sys.stderr
    if debug_enabled(debug):
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=stream)
    print(f'error: {format_error(exc)}', file=stream, flush=True)
    return EXIT_ERROR


def run_main(body: Callable[[], Optional[int]], *, debug: bool = False) -> int:
    """Run a tool's body; turn exceptions into :func:`report_error`'s line and status.

    Args:
        body: the tool's work; returns an exit status (``None`` means 0).
        debug: show tracebacks (``--debug``); ``VTSEG_DEBUG=1`` does the same.

    Returns:
        The body's status, 2 after an error, 130 after Ctrl-C.
    """
    try:
        status = body()
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # argparse, or a library calling sys.exit
        if isinstance(exc.code, str):
            return report_error(CLIError(exc.code.removeprefix('error: ')), debug=debug)
        return 0 if exc.code is None else exc.code
    except Exception as exc:  # noqa: BLE001 - every failure becomes one error line
        return report_error(exc, debug=debug)
    return 0 if status is None else int(status)
