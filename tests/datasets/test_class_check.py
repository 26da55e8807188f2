"""The model's heads, the label loader and the dataset agree on the number of classes
(vtseg.datasets.class_check), checked before the first iteration of any run."""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

import vtseg  # noqa: F401  (registers ClassCountCheckHook)
from vtseg.datasets.class_check import ClassCountError

ROOT = Path(__file__).resolve().parents[2]
TINY = {'model.backbone.base_channels': 8, 'model.neck.in_channels': [8, 16, 32, 64],
        'model.neck.out_channels': 8, 'model.decode_head.channels': 8,
        'model.decode_head.in_channels': [8, 8, 8, 8]}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from vtseg.datasets.demo import generate_demo_data
    root = tmp_path_factory.mktemp('vtdemo')
    generate_demo_data(root, num_train=1, num_val=1, seed=0, size=48, verbose=False)
    return root


def _runner(data, tmp_path, **options) -> Runner:
    cfg = Config.fromfile(str(ROOT / 'configs/demo/fpn_r18_vtdemo.py'))
    cfg.merge_from_dict({**TINY, 'test_dataloader.dataset.data_root': str(data),
                         'test_dataloader.num_workers': 0,
                         'test_dataloader.persistent_workers': False, **options})
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    return Runner.from_cfg(cfg)


def test_head_with_other_class_count_than_the_dataset_is_refused(data, tmp_path):
    runner = _runner(data, tmp_path, **{'model.decode_head.num_classes': 5})
    with pytest.raises(ClassCountError, match=r'model\.decode_head\.num_classes=5 but the '
                       r'dataset of test_dataloader \(VTDemoDataset\) has 6 classes '
                       r'\(background, beacon, .*set model\.decode_head\.num_classes=6'):
        runner.test()


def test_label_loader_with_other_class_count_is_refused(data, tmp_path):
    runner = _runner(data, tmp_path, **{'test_dataloader.dataset.pipeline.1.num_classes': 7})
    with pytest.raises(ClassCountError, match=r'CheckedLoadAnnotations .* test_dataloader '
                       r'has num_classes=7 but its dataset \(VTDemoDataset\) has 6'):
        runner.test()


def test_matching_counts_pass(data, tmp_path):
    metrics = _runner(data, tmp_path).test()
    assert 'mIoU' in metrics
