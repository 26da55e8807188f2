"""Helpers of the deployment tests: configs, tiny model options, tools, checkpoints."""
import os
import sys
from pathlib import Path

import torch
from helpers import run_command

ROOT = Path(__file__).resolve().parents[2]
DEMO = {'vtfpn': 'configs/demo/vtfpn_r18_vtdemo.py', 'fpn': 'configs/demo/fpn_r18_vtdemo.py'}
# One thread per process, sleeping OpenMP waiters: fast and polite on a shared 2-core box.
ENV = dict(os.environ, OMP_NUM_THREADS='1', OMP_WAIT_POLICY='PASSIVE',
           PYTHONWARNINGS='ignore')
# A width-8 demo VT-FPN: for the checks that need a model but not its size.
TINY = {
    'model.backbone.stem_channels': 8, 'model.backbone.base_channels': 8,
    'model.neck.in_channels': [8, 16, 32, 64], 'model.neck.out_channels': 8,
    'model.neck.token_channels': 16, 'model.neck.num_heads': 2,
    'model.decode_head.in_channels': [8, 8, 8, 8], 'model.decode_head.channels': 8,
}

# The same widths for the demo FPN.
TINY_FPN = {k: v for k, v in TINY.items()
            if k not in ('model.neck.token_channels', 'model.neck.num_heads')}


def as_cli(opts):
    return ['--cfg-options'] + [
        f"{k}=[{','.join(map(str, v))}]" if isinstance(v, list) else f'{k}={v}'
        for k, v in opts.items()]


def run_tool(*args, expect_rc=0, timeout=600):
    proc = run_command([sys.executable, *args], cwd=ROOT, env=ENV, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == expect_rc, out[-4000:]
    return out


def write_checkpoint(config, path, cfg_options=None, seed=0):
    """A checkpoint of ``config``'s freshly initialised model (fixed seed), as mmengine
    saves one: ``state_dict`` and ``meta.dataset_meta``."""
    from vtseg.deploy.from_config import load_segmentor

    torch.manual_seed(seed)
    model, _ = load_segmentor(str(ROOT / config), None, cfg_options)
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': model.dataset_meta}}, path)
    return str(path)
