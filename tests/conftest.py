"""Fixtures shared by the tests; plain helpers are in helpers.py."""
from __future__ import annotations

import pytest
import torch
from helpers import FPN, fpn_options


def pytest_configure(config):
    from vtseg.models.layers.token_pixel_kernels import kernels_threaded

    if kernels_threaded() is False:
        # A vtseg._C built without OpenMP runs its kernels only where PyTorch has one
        # thread: the tests run them there.
        torch.set_num_threads(1)


def pytest_report_header(config):
    from vtseg.models.layers.token_pixel_kernels import kernels_isa, kernels_threaded

    threads = {True: 'threaded', False: 'without OpenMP', None: 'not built'}
    return (f'vtseg._C: {kernels_isa()} ({threads[kernels_threaded()]}); torch threads: '
            f'{torch.get_num_threads()}')


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    from vtseg.datasets.demo import generate_demo_data

    root = tmp_path_factory.mktemp('vtdemo')
    generate_demo_data(root, num_train=8, num_val=2, seed=0, size=48, verbose=False)
    return root


@pytest.fixture(scope='session')
def fpn_checkpoint(demo_data, tmp_path_factory) -> str:
    """A checkpoint of the FPN demo model (another neck than VT-FPN's)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import vtseg  # noqa: F401

    init_default_scope('mmseg')
    cfg = Config.fromfile(str(FPN))
    cfg.merge_from_dict(fpn_options(demo_data))
    model = MODELS.build(cfg.model)
    path = tmp_path_factory.mktemp('fpn') / 'fpn_iter_8.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return str(path)
