"""Host memory reuse: a freed large tensor's memory serves the next one without page
faults; every shipped config declares it, and the Runner and vtseg.apis apply it."""
from __future__ import annotations

import resource
import subprocess
import sys
from types import SimpleNamespace

import pytest
from helpers import REPO, VTFPN, tiny_options
from mmengine.config import Config

from vtseg.engine.host_memory import (
    HostMemoryHook,
    _glibc,
    declared_host_memory,
    host_memory_reused,
    reuse_host_memory,
)

CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts)
needs_glibc = pytest.mark.skipif(_glibc() is None, reason='mallopt needs glibc')


@pytest.fixture
def restore_host_memory():
    before = host_memory_reused()
    yield
    reuse_host_memory(before)


FAULTS = """
import resource, torch
from vtseg.engine.host_memory import reuse_host_memory

def faults_of_a_fresh_map():
    # minor page faults of writing a new 64 MiB tensor right after freeing another
    torch.empty(16 * 2 ** 20).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2 ** 20).fill_(2.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

system = faults_of_a_fresh_map()
assert reuse_host_memory(True) is True
faults_of_a_fresh_map()  # the first block after the switch comes from the heap
# fewest of a few: the VM may reclaim idle memory behind the allocator's back now and then
print(system, min(faults_of_a_fresh_map() for _ in range(5)))
"""


@needs_glibc
def test_reused_memory_is_not_faulted_in_again():
    """In a fresh process, as a run that applies it at start-up: glibc's default maps
    every 64 MiB block afresh, reuse serves it from the heap without faults."""
    out = subprocess.run([sys.executable, '-c', FAULTS], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    system, reused = map(int, out.split()[-2:])
    pages = 64 * 2 ** 20 // resource.getpagesize()
    assert system > pages // 2, (system, reused)
    assert reused < pages // 20, (system, reused)


def test_every_shipped_config_declares_it():
    assert len(CONFIGS) >= 12
    for config in CONFIGS:
        assert declared_host_memory(Config.fromfile(str(config))) is True, config


def test_declaration_is_checked():
    assert declared_host_memory(Config(dict(custom_hooks=[]))) is None
    assert declared_host_memory(Config(dict(custom_hooks=[
        dict(type='HostMemoryHook', reuse=False)]))) is False
    with pytest.raises(ValueError, match='reuse must be True or False'):
        declared_host_memory(Config(dict(custom_hooks=[
            dict(type='HostMemoryHook', reuse='yes')])))
    with pytest.raises(ValueError, match='reuse must be True or False'):
        HostMemoryHook(reuse=1)


@needs_glibc
def test_hook_applies_it_when_a_run_starts(restore_host_memory):
    reuse_host_memory(False)
    logs = []
    HostMemoryHook().before_run(SimpleNamespace(logger=SimpleNamespace(info=logs.append)))
    assert host_memory_reused() and 'kept for reuse' in logs[0]
    HostMemoryHook(reuse=False).before_run(SimpleNamespace(logger=None))
    assert not host_memory_reused()


@needs_glibc
def test_init_model_follows_the_config(restore_host_memory, demo_data):
    from vtseg.apis import init_model

    cfg = Config.fromfile(str(VTFPN))
    cfg.merge_from_dict(tiny_options(demo_data))
    reuse_host_memory(False)
    init_model(cfg)
    assert host_memory_reused()
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'HostMemoryHook'] + [
        dict(type='HostMemoryHook', reuse=False)]
    init_model(cfg)
    assert not host_memory_reused()
