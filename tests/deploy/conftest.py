"""Fixtures of the deployment tests: demo data and a tiny checkpoint."""
import pytest
from deploy_helpers import DEMO, TINY, write_checkpoint


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    """A small VTDemo set at the configs' 96x96."""
    from vtseg.datasets.demo import generate_demo_data

    root = tmp_path_factory.mktemp('vtdemo')
    generate_demo_data(root, num_train=16, num_val=12, seed=0, size=96, verbose=False)
    return root


@pytest.fixture(scope='session')
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('tiny') / 'tiny_vtfpn.pth'
    return write_checkpoint(DEMO['vtfpn'], path, TINY)
