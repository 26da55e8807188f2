"""Checkpoint files that are not what they should be get an error naming the file and
saying what it is, through every loading path; stale temporary files of killed saves are
removed, those of running saves are not."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import VTFPN, run_command, tiny_options
from mmengine.config import Config
from mmengine.runner import load_checkpoint as mmengine_load_checkpoint

from vtseg.checkpoint import CheckpointError, load_checkpoint, remove_stale_tmp_files
from vtseg.checkpoint.io import _HOST


class _Unsafe:
    """Unpickling it would call print: weights-only loading must refuse it."""

    def __reduce__(self):
        return (print, ('unpickled',))


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp('bad')
    good = root / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(64, 64)}, 'meta': {}}, good)
    data = good.read_bytes()
    files = {
        'truncated': (data[:len(data) // 2], 'is truncated or corrupt'),
        'random': (os.urandom(4096), 'is not a PyTorch checkpoint'),
        'pickle': (pickle.dumps({'state_dict': {'w': 1}, 'x': _Unsafe()}),
                   'is a plain pickle (written with pickle.dump, not torch.save)'),
    }
    out = {}
    for name, (content, message) in files.items():
        path = root / f'{name}.pth'
        path.write_bytes(content)
        out[name] = (str(path), message)
    unsafe = root / 'unsafe.pth'
    torch.save({'state_dict': {'w': torch.zeros(2)}, 'extra': Path('x')}, unsafe)
    out['unsafe'] = (str(unsafe), 'needs unsafe unpickling: it holds pathlib')
    return out


KINDS = ['truncated', 'random', 'pickle', 'unsafe']


@pytest.mark.parametrize('kind', KINDS)
def test_our_reader_and_mmengines_loader_name_the_file_and_what_it_is(bad_files, kind):
    path, message = bad_files[kind]
    for load in (lambda: load_checkpoint(path),
                 lambda: mmengine_load_checkpoint(torch.nn.Linear(64, 64), path)):
        with pytest.raises(CheckpointError) as err:
            load()
        msg = str(err.value)
        assert path in msg and message in msg, msg
        if kind in ('pickle', 'unsafe'):
            assert 'interrupted' not in msg and 'weights_only=False' in msg  # the fix


@pytest.mark.parametrize('kind', KINDS)
def test_inference_apis_name_the_file(bad_files, demo_data, kind):
    from mmseg.apis import MMSegInferencer
    from mmseg.apis import init_model as mmseg_init_model

    from vtseg.apis import VTSegInferencer, init_model

    path, message = bad_files[kind]
    cfg = Config.fromfile(str(VTFPN))
    cfg.merge_from_dict(tiny_options(demo_data))
    calls = [lambda: mmseg_init_model(cfg.copy(), path, device='cpu'),
             lambda: init_model(cfg.copy(), path),
             lambda: MMSegInferencer(model=cfg.copy(), weights=path, device='cpu'),
             lambda: VTSegInferencer(model=cfg.copy(), weights=path, device='cpu')]
    for call in calls:
        with pytest.raises(CheckpointError, match=message.split('(')[0].strip()) as err:
            call()
        assert path in str(err.value)


def test_attention_tool_names_the_file(bad_files, demo_data, tmp_path):
    path, message = bad_files['random']
    image = next((Path(demo_data) / 'img_dir' / 'val').glob('*.png'))
    opts = [f'{k}=[{",".join(map(str, v))}]' if isinstance(v, list) else f'{k}={v}'
            for k, v in tiny_options(demo_data).items()]
    tool = Path(__file__).resolve().parents[2] / 'tools' / 'visualize_attention.py'
    proc = run_command([sys.executable, tool, VTFPN, path, image,
                        '--out-dir', tmp_path, '--cfg-options', *opts], timeout=300,
                       env=dict(os.environ, PYTHONWARNINGS='ignore',
                                PYTHONPATH=str(tool.parents[1])))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and path in last and message in last, proc.stderr[-2000:]


def test_stale_tmp_files_are_removed_running_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    stale = tmp_path / f'.iter_4.pth.{_HOST}-{dead.pid}.abc123_x.tmp'
    running = tmp_path / f'.iter_6.pth.{_HOST}-{os.getpid()}.def456.tmp'
    elsewhere = tmp_path / f'.iter_8.pth.otherhost-{dead.pid}.ghi789.tmp'
    older = tmp_path / '.last_checkpoint.k2j4h5.tmp'  # no process recorded
    unrelated = tmp_path / '.notes.tmp'
    for f in (stale, running, elsewhere, older, unrelated):
        f.write_bytes(b'x' * 10)
    removed = remove_stale_tmp_files(str(tmp_path))
    assert sorted(removed) == sorted([str(stale), str(older)])
    assert running.exists() and elsewhere.exists() and unrelated.exists()
