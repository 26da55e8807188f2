"""The tests' own process runner (helpers.run_command) bounds what it starts."""
import os
import re
import sys
import time

import pytest
from helpers import run_command

# A child that starts a grandchild in a session of its own (as torchrun starts its
# workers), which inherits the output and outlives the child unless it is killed too.
ORPHANING = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],
                          start_new_session=True)
print('worker-pid', worker.pid, flush=True)
time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def test_finished_command_returns_its_output_and_status():
    proc = run_command([sys.executable, '-c', 'import sys; print("out"); '
                        'print("err", file=sys.stderr); sys.exit(3)'], timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, 'out\n', 'err\n')


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='finds descendants through /proc')
def test_overrun_fails_with_the_output_and_kills_the_whole_tree():
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match='did not finish within 5 s') as failure:
        run_command([sys.executable, '-c', ORPHANING], timeout=5)
    assert time.monotonic() - start < 30
    worker = int(re.search(r'worker-pid (\d+)', str(failure.value)).group(1))
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker)
