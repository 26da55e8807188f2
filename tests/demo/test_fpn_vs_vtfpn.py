"""The demo application finds the configs and tools it runs in a vtseg source tree, and
says so clearly where there is none (an installed package holds only vtseg/)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO

from vtseg.demo import find_source_tree, run_demo


def test_source_tree_is_found_or_explained(tmp_path, monkeypatch):
    assert find_source_tree(str(REPO)) == REPO
    monkeypatch.chdir(REPO)
    assert find_source_tree() == REPO
    with pytest.raises(FileNotFoundError) as err:
        run_demo(root=str(tmp_path), work_dir=str(tmp_path / 'w'))
    msg = str(err.value)
    assert 'configs/demo/fpn_r18_vtdemo.py' in msg and 'tools/train.py' in msg
    assert 'installed vtseg package contains only the vtseg/ code' in msg
    assert 'python tools/demo.py from a clone' in msg


def test_from_an_installed_copy_the_demo_uses_the_given_tree(tmp_path):
    # vtseg/ alone in site-packages-like folder, as a non-editable install leaves it.
    site = tmp_path / 'site'
    shutil.copytree(REPO / 'vtseg', site / 'vtseg',
                    ignore=shutil.ignore_patterns('__pycache__'))
    code = ('import vtseg.demo.fpn_vs_vtfpn as d\n'
            'print(d._models_source())\n'
            f'print(d.find_source_tree({str(REPO)!r}))\n'
            'd.find_source_tree()\n')
    proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(site), PYTHONWARNINGS='ignore'))
    lines = proc.stdout.splitlines()
    assert lines[0] == str(site / 'vtseg' / 'models')  # fingerprints the installed code
    assert lines[1] == str(REPO)
    assert proc.returncode == 1 and 'FileNotFoundError' in proc.stderr
    assert 'an installed vtseg package contains only the vtseg/ code' in proc.stderr
