"""The checkpoint hooks are declared by every shipped config, and a bad hook argument is an
error before the first iteration, whichever entry point runs the config."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import REPO, VTFPN, as_cli, mmseg_tool, run, tiny_options
from mmengine.config import Config
from mmengine.hooks import CheckpointHook
from mmengine.runner import Runner

from vtseg.checkpoint import CheckpointReportHook, SafeCheckpointHook

CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts)


def test_every_shipped_config_declares_the_checkpoint_hooks():
    assert len(CONFIGS) >= 12
    for path in CONFIGS:
        cfg = Config.fromfile(str(path))
        assert 'vtseg' in cfg.custom_imports['imports'], path
        hooks = cfg.default_hooks
        assert hooks.checkpoint.type == 'SafeCheckpointHook', path
        assert hooks.checkpoint_report.type == 'CheckpointReportHook', path
        assert hooks.model_check.type == 'ModelCheckHook', path


def _runner(data, **options):
    cfg = Config.fromfile(str(VTFPN))
    cfg.merge_from_dict({**tiny_options(data), **options})
    cfg.work_dir = str(Path(data).parent / 'work_hooks')
    return Runner.from_cfg(cfg)


def test_a_plain_runner_gets_the_hooks_from_the_config(demo_data):
    runner = _runner(demo_data)
    types = [type(h) for h in runner.hooks]
    assert SafeCheckpointHook in types and CheckpointReportHook in types
    assert CheckpointHook in SafeCheckpointHook.__mro__


def test_typo_in_a_checkpoint_argument_fails_when_the_runner_is_built(demo_data):
    with pytest.raises(ValueError) as err:
        _runner(demo_data, **{'default_hooks.checkpoint.intervl': 3})
    msg = str(err.value)
    assert "unknown argument 'intervl' (did you mean 'interval'?)" in msg
    assert 'Valid arguments:' in msg and 'max_keep_ckpts' in msg and 'save_best' in msg
    with pytest.raises(ValueError, match='must be True or False'):
        _runner(demo_data, **{'default_hooks.checkpoint_report.allow_missing': 'yes'})


@pytest.mark.slow
def test_typo_is_reported_before_training_by_our_train_and_mmseg_train(demo_data, tmp_path):
    opts = as_cli({**tiny_options(demo_data), 'default_hooks.checkpoint.intervl': 3})
    out = run(REPO / 'tools' / 'train.py', VTFPN, '--work-dir', tmp_path / 'a', *opts,
              expect_rc=2)
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: default_hooks.checkpoint: unknown argument 'intervl' "
                           "(did you mean 'interval'?)"), last
    assert 'Iter(train)' not in out
    out = run(mmseg_tool('train.py'), VTFPN, '--work-dir', tmp_path / 'b', *opts,
              expect_rc=1)
    assert "'intervl' (did you mean 'interval'?)" in out and 'Iter(train)' not in out
    assert not list((tmp_path / 'b').glob('*.pth'))
