"""Test instrumentation imported by a config (``custom_imports``): the checkpoint save of
the file named by ``$VTSEG_TEST_SLOW_SAVE`` stops in ``fsync`` (its temporary file written,
not yet renamed) after writing ``$VTSEG_TEST_SLOW_SAVE_MARK``, so a test can kill the run
in the middle of that save."""
import os
import time

_TARGET = os.environ.get('VTSEG_TEST_SLOW_SAVE')

if _TARGET:
    _fsync = os.fsync

    def _slow_fsync(fd: int) -> None:
        try:
            name = os.readlink(f'/proc/self/fd/{fd}')
        except OSError:
            name = ''
        if os.path.basename(name).startswith(f'.{_TARGET}.'):
            with open(os.environ['VTSEG_TEST_SLOW_SAVE_MARK'], 'w') as f:
                f.write(name)
            time.sleep(600)
        _fsync(fd)

    os.fsync = _slow_fsync
