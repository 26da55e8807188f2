"""The pre-flight forward is declared in the configs: a plain Runner (and so mmseg's own
tools/train.py) stops before the first iteration when the parts do not fit."""
from __future__ import annotations

from pathlib import Path

import pytest
from helpers import VTFPN, tiny_options
from mmengine.config import Config
from mmengine.runner import Runner

from vtseg.engine import ModelConfigError


def test_runner_stops_before_training_when_the_neck_does_not_fit(demo_data):
    cfg = Config.fromfile(str(VTFPN))
    cfg.merge_from_dict({**tiny_options(demo_data), 'model.neck.in_channels': [8, 16, 32]})
    cfg.work_dir = str(Path(demo_data).parent / 'work_model_check')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ModelConfigError, match=r'model.neck \(VTFPN\).*in_channels'):
        runner.train()
    assert runner.iter == 0
