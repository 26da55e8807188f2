"""Command-line errors (vtseg.cli): one ``error:`` line and exit status 2, the traceback
only with --debug or VTSEG_DEBUG=1; the attention tool's arguments and unreadable images."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import mmcv
import numpy as np
import pytest
from helpers import run_command
from mmengine.config import Config

import vtseg  # noqa: F401
from vtseg.cli import (
    CfgOptionError,
    CfgOptionsAction,
    checkpoint_file,
    format_error,
    merge_cfg_options,
    run_main,
)

ROOT = Path(__file__).resolve().parents[2]
VTFPN = 'configs/demo/vtfpn_r18_vtdemo.py'
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _local_rank(monkeypatch):
    """tools/train.py sets LOCAL_RANK when it is absent; undo that after each test."""
    monkeypatch.setenv('LOCAL_RANK', '0')


def _errors(text: str):
    return [line for line in text.splitlines() if line.startswith('error:')]


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    from vtseg.datasets.demo import generate_demo_data
    root = tmp_path_factory.mktemp('vtdemo')
    generate_demo_data(root, num_train=2, num_val=1, seed=0, size=48, verbose=False)
    return root


def _data_options(root):
    return [f'{s}_dataloader.{k}' for s in ('train', 'val', 'test')
            for k in (f'dataset.data_root={root}', 'num_workers=0', 'persistent_workers=False')]


# ------------------------------------------------------------------ case 5: tools/train.py
def test_bad_model_value_is_one_error_line_and_exit_2(demo_data, tmp_path):
    proc = run_command(
        [sys.executable, 'tools/train.py', VTFPN, '--work-dir', tmp_path / 'w',
         '--cfg-options', 'model.neck.num_tokens=0', *_data_options(demo_data)],
        cwd=ROOT, env=ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert _errors(proc.stderr) == [
        'error: VTFPN: num_tokens must be a positive integer, got 0'], proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
    # --debug (or VTSEG_DEBUG=1) adds the traceback, the error line stays last.
    proc = run_command(
        [sys.executable, 'tools/train.py', VTFPN, '--work-dir', tmp_path / 'w',
         '--cfg-options', 'model.neck.num_tokens=0', *_data_options(demo_data)],
        cwd=ROOT, env=dict(ENV, VTSEG_DEBUG='1'), timeout=300)
    assert proc.returncode == 2 and 'Traceback (most recent call last)' in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith('error: VTFPN: num_tokens')


@pytest.mark.parametrize('argv, message', [
    ([VTFPN, '--cfg-options', 'model.neck.num_tokens8'],
     "argument --cfg-options: 'model.neck.num_tokens8' is not KEY=VALUE (no \"=\" in it)"),
    ([VTFPN, '--cfg-options', 'model.neck.num_tokens', '=', '8'], 'is not KEY=VALUE'),
    ([VTFPN, '--cfg-options', '.x=1'], "the key '.x' is empty or has an empty part"),
    ([VTFPN, '--cfg-options', 'model.neck.in_channels=[1,2'], 'Imbalanced brackets'),
    (['--cfg-options', 'a=1', VTFPN], 'positional arguments go before --cfg-options'),
    (['configs/nope.py'], "config file 'configs/nope.py' does not exist"),
    (['configs'], "'configs' is a folder, not a config file"),
    (['README.md'], "'README.md' is not a config file"),
    ([VTFPN, '--work-dir', 'README.md'], "folder 'README.md' is a file, not a folder"),
])
def test_command_line_mistakes_are_one_error_line_and_exit_2(argv, message, capsys):
    assert _tool('train').main(argv) == 2
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and message in _errors(err)[0], err


@pytest.mark.parametrize('text, message', [
    ("model = dict(type='VTFPN'\nx = [\n", 'syntax error: invalid syntax'),
    ("_base_ = ['./absent.py']\n", 'absent.py does not exist (a _base_ file it inherits?)'),
    ('a = undefined_name + 1\n', "fails to load: NameError: name 'undefined_name'"),
    ('model = dict(type="EncoderDecoder")\n', "config file 'x' does not exist"),
])
def test_config_that_cannot_be_read_is_named(tmp_path, text, message, capsys):
    path = tmp_path / 'bad_config.py'
    path.write_text(text)
    if 'does not exist' in message and 'absent' not in message:
        path = 'x'  # not even a file
    assert _tool('train').main([str(path)]) == 2
    errors = _errors(capsys.readouterr().err)
    assert len(errors) == 1 and message in errors[0], errors
    if path != 'x':
        assert str(path) in errors[0]


@pytest.mark.parametrize('key, message', [
    ('modle.neck.num_tokens', "the config has no key 'modle' (did you mean 'model'?)"),
    ('model.nekc.num_tokens', "model has no key 'nekc' (did you mean 'neck'?)"),
    ('param_scheduler.5.end', 'param_scheduler is a list of 2 entries; '
                              "'5' is not an index 0..1"),
    ('max_iters.x', 'max_iters is 1000 (int), which has no key'),
])
def test_mistyped_cfg_option_key_is_an_error_not_a_new_key(key, message, capsys):
    cfg = Config.fromfile(str(ROOT / VTFPN))
    with pytest.raises(CfgOptionError) as err:
        merge_cfg_options(cfg, {key: 8})
    assert message in str(err.value)
    merge_cfg_options(cfg, {'model.neck.num_tokens': 4, 'param_scheduler.1.end': 9,
                            'model.neck.new_argument': 1})  # existing parents: merged
    assert cfg.model.neck.num_tokens == 4 and cfg.param_scheduler[1].end == 9
    # Through the tool, the same mistake is one error line.
    assert _tool('train').main([VTFPN, '--cfg-options', f'{key}=8']) == 2
    assert message in _errors(capsys.readouterr().err)[0]


def test_format_error_unwraps_dataloader_worker_errors():
    from vtseg.datasets.loading import BadSampleError
    worker = BadSampleError(
        'Caught BadSampleError in DataLoader worker process 0.\nOriginal Traceback (most '
        'recent call last):\n  File "x.py", line 1, in f\n    raise BadSampleError(...)\n'
        'vtseg.datasets.loading.BadSampleError: a/b.png: label map has 3 channels')
    assert format_error(worker) == ('a/b.png: label map has 3 channels (in DataLoader '
                                    'worker process 0)')
    try:
        {}['missing']
    except KeyError as e:  # a library's error: its type and how to see the traceback
        assert format_error(e).splitlines() == [
            'KeyError: missing', '(run with --debug or VTSEG_DEBUG=1 to see the traceback)']

    def interrupted():
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130


def test_cfg_options_action_keeps_mmengine_values():
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction)
    args = parser.parse_args(['--cfg-options', 'a.b=[1,2]', 'c=x=y', 'd=True'])
    assert args.cfg_options == {'a.b': [1, 2], 'c': 'x=y', 'd': True}


# ------------------------------------------------------ case 5: the attention tool's inputs
def _model_cfg(tmp_path) -> str:
    cfg = Config.fromfile(str(ROOT / VTFPN))
    cfg.merge_from_dict({'model.backbone.base_channels': 8,
                         'model.neck.in_channels': [8, 16, 32, 64],
                         'model.neck.out_channels': 8, 'model.neck.token_channels': 16,
                         'model.neck.num_heads': 2, 'model.decode_head.channels': 8,
                         'model.decode_head.in_channels': [8, 8, 8, 8],
                         'model.data_preprocessor.size': None})
    path = tmp_path / 'tiny_vtfpn.py'
    cfg.dump(str(path))
    return str(path)


def _images(folder: Path, names):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        mmcv.imwrite((rng.random((40, 48, 3)) * 255).astype(np.uint8), str(folder / name))
    return [str(folder / n) for n in names]


def test_attention_tool_takes_two_images_as_images_not_a_checkpoint(tmp_path, capsys):
    img1, img2 = _images(tmp_path / 'in', ['img1.png', 'img2.jpg'])
    out = tmp_path / 'out'
    tool = _tool('visualize_attention')
    assert tool.main([_model_cfg(tmp_path), img1, img2, '--out-dir', str(out)]) == 0
    err = capsys.readouterr().err
    assert 'RANDOM weights' in err and 'weights_only' not in err
    assert sorted(json.loads((out / 'entropy.json').read_text())) == [img1, img2]


def test_attention_tool_checks_that_the_checkpoint_is_one(tmp_path, capsys):
    cfg = _model_cfg(tmp_path)
    (img,) = _images(tmp_path / 'in', ['a.png'])
    fake = tmp_path / 'model.pth'
    fake.write_bytes(Path(img).read_bytes())  # an image named like a checkpoint
    tool = _tool('visualize_attention')
    for argv, message in [
            ([cfg, str(fake), img], f"argument CHECKPOINT: '{fake}' is a PNG image, not a "
                                    'checkpoint'),
            ([cfg, str(tmp_path / 'nope.pth'), img], 'does not exist (leave it out'),
            ([cfg, '--checkpoint', img, img], 'is a PNG image, not a checkpoint'),
            ([cfg, str(tmp_path / 'in')], None)]:
        code = tool.main([*argv, '--out-dir', str(tmp_path / 'out')])
        err = capsys.readouterr().err
        if message is None:
            assert code == 0
            continue
        assert code == 2 and len(_errors(err)) == 1 and message in _errors(err)[0], err
    with pytest.raises(argparse.ArgumentTypeError, match='is an empty file'):
        (tmp_path / 'empty.pth').write_bytes(b'')
        checkpoint_file(str(tmp_path / 'empty.pth'))


def test_attention_tool_skips_unreadable_image_and_keeps_the_others(tmp_path, capsys):
    folder = tmp_path / 'in'
    good = _images(folder, ['a.png', 'c.png'])
    bad = folder / 'b.png'
    bad.write_bytes(Path(good[0]).read_bytes()[:60])  # truncated
    out = tmp_path / 'out'
    tool = _tool('visualize_attention')
    assert tool.main([_model_cfg(tmp_path), str(folder), '--out-dir', str(out)]) == 1
    err = capsys.readouterr().err
    assert f'warning: skipped {bad}' in err
    assert _errors(err) and '1 of 3 images could not be read' in _errors(err)[0]
    assert sorted(json.loads((out / 'entropy.json').read_text())) == good
    assert list(json.loads((out / 'skipped.json').read_text())) == [str(bad)]
    (out / 'entropy.json').unlink()
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert tool.main([_model_cfg(tmp_path), str(empty), '--out-dir', str(out)]) == 2
    assert 'holds no image' in _errors(capsys.readouterr().err)[0]


# ------------------------------------------------------------------- other tools
@pytest.mark.parametrize('argv, message', [
    (['configs/fpn_r50_lip.py', '--shape', '0', '5'], 'must be a positive integer, got 0'),
    (['configs/fpn_r50_lip.py', '--shape', '512', 'x'], "'x' is not an integer"),
    (['configs/missing.py'], "config file 'configs/missing.py' does not exist"),
])
def test_get_flops_errors_are_one_line_and_exit_2(argv, message, capsys):
    assert _tool('get_flops').main(argv) == 2
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and message in _errors(err)[0], err


def test_dataset_check_module_exits_2(tmp_path, capsys):
    from vtseg.datasets.checks import main
    assert main([VTFPN, '--cfg-options',
                 f'train_dataloader.dataset.data_root={tmp_path}']) == 2
    assert 'does not exist' in _errors(capsys.readouterr().err)[0]
