"""vtseg's init_model, VTSegInferencer and the attention tool refuse a checkpoint that
leaves model tensors unset, listing them, unless a partial load is asked for."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, VTFPN, run_command, tiny_options
from mmengine.config import Config

from vtseg.apis import VTSegInferencer, init_model
from vtseg.checkpoint import CheckpointMismatchError

MISSING = 'neck.tokenizers.0.token_filters'  # a VT-FPN tensor an FPN checkpoint lacks


def _cfg(data, **extra) -> Config:
    cfg = Config.fromfile(str(VTFPN))
    cfg.merge_from_dict({**tiny_options(data), **extra})
    return cfg


def test_init_model_refuses_a_checkpoint_of_another_neck(fpn_checkpoint, demo_data):
    with pytest.raises(CheckpointMismatchError) as err:
        init_model(_cfg(demo_data), fpn_checkpoint)
    msg = str(err.value)
    assert f'Checkpoint {fpn_checkpoint}: loads' in msg and MISSING in msg
    assert 'model tensors missing from the checkpoint' in msg
    assert 'allow_missing=True' in msg


def test_partial_load_asked_for_explicitly(fpn_checkpoint, demo_data):
    ckpt = torch.load(fpn_checkpoint)['state_dict']
    lateral = 'neck.lateral_convs.0.conv.weight'  # common to FPN and VT-FPN
    for model in (init_model(_cfg(demo_data), fpn_checkpoint, allow_missing=True),
                  init_model(_cfg(demo_data, **{
                      'default_hooks.checkpoint_report.allow_missing': True}),
                      fpn_checkpoint)):
        assert torch.equal(model.state_dict()[lateral], ckpt[lateral])
        assert not model.training  # eval mode, as mmseg's init_model


def test_a_fitting_checkpoint_loads(demo_data, tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    source = MODELS.build(_cfg(demo_data).model)
    path = tmp_path / 'vtfpn.pth'
    torch.save({'state_dict': source.state_dict(), 'meta': {'dataset_meta': {
        'classes': tuple('abcdef'), 'palette': [[0, 0, 0]] * 6}}}, path)
    model = init_model(_cfg(demo_data), str(path))
    assert torch.equal(model.state_dict()[MISSING], source.state_dict()[MISSING])
    assert model.dataset_meta['classes'] == tuple('abcdef')


def test_inferencer_refuses_then_allows(fpn_checkpoint, demo_data):
    with pytest.raises(CheckpointMismatchError, match=MISSING):
        VTSegInferencer(model=_cfg(demo_data), weights=fpn_checkpoint, device='cpu')
    VTSegInferencer(model=_cfg(demo_data), weights=fpn_checkpoint, device='cpu',
                    allow_missing=True)


@pytest.mark.slow
def test_attention_tool_refuses_then_allows(fpn_checkpoint, demo_data, tmp_path):
    image = next((Path(demo_data) / 'img_dir' / 'val').glob('*.png'))
    opts = [f'{k}=[{",".join(map(str, v))}]' if isinstance(v, list) else f'{k}={v}'
            for k, v in tiny_options(demo_data).items()]
    cmd = [sys.executable, str(REPO / 'tools' / 'visualize_attention.py'), str(VTFPN),
           fpn_checkpoint, str(image), '--out-dir', str(tmp_path), '--cfg-options', *opts]
    env = dict(os.environ, PYTHONWARNINGS='ignore', PYTHONPATH=str(REPO))
    proc = run_command(cmd, timeout=300, env=env)
    assert proc.returncode != 0 and MISSING in proc.stderr, proc.stderr[-2000:]
    assert 'error: ' in proc.stderr and not (tmp_path / 'entropy.json').exists()
    proc = run_command(cmd + ['default_hooks.checkpoint_report.allow_missing=True'],
                       timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / 'entropy.json').is_file()
