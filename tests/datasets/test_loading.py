"""Bad samples in the shipped configs (vtseg.datasets.loading): every config loads images
and labels through the checked loaders, which name the bad file at train and at test time."""
from __future__ import annotations

import os
import os.path as osp
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.registry import DATASETS

import vtseg  # noqa: F401  (registers the checked loaders)
from vtseg.datasets import loading
from vtseg.datasets.checks import _class_default
from vtseg.datasets.loading import BadSampleError, skipped_samples

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / 'configs').rglob('*.py')
                 if '_base_' not in p.parts)
# One config per dataset recipe: LIP (resize ignoring the aspect ratio), COCO-Stuff, demo.
RECIPES = ['configs/fpn_r50_lip.py', 'configs/fpn_r50_coco-stuff164k.py',
           'configs/demo/fpn_r18_vtdemo.py']
SPLITS = {'train': 'train_dataloader', 'test': 'test_dataloader'}

init_default_scope('mmseg')


def _walk(pipeline):
    for t in pipeline:
        if t['type'] == 'TestTimeAug':
            for group in t['transforms']:
                yield from _walk(group)
        else:
            yield t


def _dataset_cfg(config: str, split: str, root: Path) -> dict:
    cfg = Config.fromfile(str(ROOT / config))
    ds = cfg[SPLITS[split]]['dataset'].to_dict()
    ds['data_root'] = str(root)
    return ds


def _sample_paths(ds: dict, name: str):
    """(image path, label path) of sample ``name`` in the layout the dataset reads."""
    root, prefix = ds['data_root'], ds['data_prefix']
    img_suffix = ds.get('img_suffix', _class_default(ds['type'], 'img_suffix'))
    seg_suffix = ds.get('seg_map_suffix', _class_default(ds['type'], 'seg_map_suffix'))
    return (osp.join(root, prefix['img_path'], name + img_suffix),
            osp.join(root, prefix['seg_map_path'], name + seg_suffix))


def _write(path: str, array: np.ndarray) -> None:
    os.makedirs(osp.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, array), path


def _num_classes(config: str) -> int:
    return Config.fromfile(str(ROOT / config)).model.decode_head.num_classes


def _bad_sample(kind: str, num_classes: int):
    """(image, label) arrays of one bad sample of ``kind``; the image is 32x40."""
    rng = np.random.default_rng(0)
    image = (rng.random((32, 40, 3)) * 255).astype(np.uint8)
    label = np.zeros((32, 40), np.uint8)
    label[16:] = 1
    if kind == 'other_size':
        label = label[:30]
    elif kind == 'rgb':
        label = np.stack([label * 40, label * 80, label * 120], -1)
    elif kind == 'beyond':
        label[0, 0] = num_classes  # one value past the last class (255 is ignored)
    elif kind == '16bit':
        label = label.astype(np.uint16)
        label[0, :4] = 256 + 1  # mmseg's uint8 cast wraps 257 to class 1
    elif kind == 'tiny':
        image, label = image[:1, :1], label[:1, :1]
    return image, label


EXPECTED = {
    'other_size': ('label', r'label map is 30x40 \(HxW\) but its image .* is 32x40'),
    'rgb': ('label', 'label map has 3 channels'),
    'beyond': ('label', r'label values \[{n}\] are outside the {n} classes'),
    '16bit': ('label', r'uint16 label map with values 0\.\.257 outside 0\.\.255.*257 -> 1'),
    'tiny': ('image', r'image is 1x1 \(HxW\), smaller than min_size=8'),
}


@pytest.mark.parametrize('split', ['train', 'test'])
@pytest.mark.parametrize('config', RECIPES)
@pytest.mark.parametrize('kind', list(EXPECTED))
def test_bad_sample_of_shipped_config_is_an_error_naming_the_file(tmp_path, config, split,
                                                                  kind):
    n = _num_classes(config)
    ds = _dataset_cfg(config, split, tmp_path)
    good_img, good_seg = _sample_paths(ds, 'a_good')
    image, label = _bad_sample('none', n)
    _write(good_img, image)
    _write(good_seg, label)
    bad_img, bad_seg = _sample_paths(ds, 'b_bad')
    image, label = _bad_sample(kind, n)
    _write(bad_img, image)
    _write(bad_seg, label)
    dataset = DATASETS.build(dict(ds, test_mode=split == 'test'))
    assert dataset[0]['data_samples'].img_path == good_img  # a good sample passes
    which, pattern = EXPECTED[kind]
    with pytest.raises(BadSampleError, match=pattern.format(n=n)) as err:
        dataset[1]
    assert str(err.value).startswith(bad_img if which == 'image' else bad_seg)


def test_skip_option_and_count_are_kept_in_shipped_configs(tmp_path):
    config = 'configs/demo/fpn_r18_vtdemo.py'
    ds = _dataset_cfg(config, 'train', tmp_path)
    for t in ds['pipeline'][:2]:  # what the config's comment says to do
        t['on_error'] = 'skip'
    for name, kind in [('a', 'none'), ('b', 'rgb')]:
        img, seg = _sample_paths(ds, name)
        image, label = _bad_sample(kind, 6)
        _write(img, image)
        _write(seg, label)
    before = len(skipped_samples())
    dataset = DATASETS.build(ds)
    try:
        assert dataset[1]['data_samples'].img_path == _sample_paths(ds, 'a')[0]  # another
        assert skipped_samples()[before][0] == _sample_paths(ds, 'b')[1]
    finally:  # the tally is per process: leave it as other tests expect it
        with open(loading._tally, 'r+', encoding='utf-8') as f:
            lines = f.readlines()[:before]
            f.seek(0)
            f.writelines(lines)
            f.truncate()
    hooks = [h['type'] for h in Config.fromfile(str(ROOT / config)).custom_hooks]
    assert 'SkippedSamplesHook' in hooks  # the count is logged after training


def test_every_shipped_pipeline_uses_the_checked_loaders_with_the_class_count():
    assert len(CONFIGS) >= 12
    for config in CONFIGS:
        cfg = Config.fromfile(str(ROOT / config))
        n = cfg.model.decode_head.num_classes
        pipelines = {f'{s}_dataloader': cfg[f'{s}_dataloader'].dataset.pipeline
                     for s in ('train', 'val', 'test')}
        pipelines['tta_pipeline'] = cfg.tta_pipeline
        for where, pipeline in pipelines.items():
            types = [t['type'] for t in _walk(pipeline)]
            assert 'LoadAnnotations' not in types, (config, where)
            loaders = [t for t in _walk(pipeline) if t['type'] == 'CheckedLoadAnnotations']
            assert loaders and all(t['num_classes'] == n for t in loaders), (config, where)
            if where == 'train_dataloader':  # before any resize: the raw pair is checked
                assert types[:2] == ['CheckedLoadImageFromFile', 'CheckedLoadAnnotations']
            elif where != 'tta_pipeline':
                # mmseg's MMSegInferencer finds the image loader by this exact name; the
                # label loader checks the image size (ori_shape) instead.
                assert types[0] == 'LoadImageFromFile', (config, where)


def test_inference_api_runs_the_shipped_test_pipeline(tmp_path):
    """Without a label (mmseg.apis), the checked label loader passes the image on."""
    from mmseg.apis import inference_model, init_model

    image = tmp_path / 'a.png'
    cv2.imwrite(str(image), _bad_sample('none', 6)[0])
    cfg = Config.fromfile(str(ROOT / 'configs/demo/fpn_r18_vtdemo.py'))
    model = init_model(cfg, None, device='cpu')
    assert inference_model(model, str(image)).pred_sem_seg.data.shape == (1, 32, 40)


def test_test_run_with_a_bad_label_fails_instead_of_reporting_a_metric(tmp_path):
    """mmseg's IoUMetric drops label values beyond the classes without a word."""
    from vtseg.datasets.demo import generate_demo_data

    data = tmp_path / 'vtdemo'
    generate_demo_data(data, num_train=1, num_val=2, seed=0, size=48, verbose=False)
    label = data / 'ann_dir' / 'val' / '000001.png'
    seg = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    seg[:8, :8] = 9  # the demo has 6 classes
    cv2.imwrite(str(label), seg)
    cfg = Config.fromfile(str(ROOT / 'configs/demo/fpn_r18_vtdemo.py'))
    cfg.merge_from_dict({'test_dataloader.dataset.data_root': str(data),
                         'test_dataloader.num_workers': 0,
                         'test_dataloader.persistent_workers': False,
                         'model.backbone.base_channels': 8,
                         'model.neck.in_channels': [8, 16, 32, 64],
                         'model.neck.out_channels': 8, 'model.decode_head.channels': 8,
                         'model.decode_head.in_channels': [8, 8, 8, 8]})
    cfg.work_dir = str(tmp_path / 'work')
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    with pytest.raises(BadSampleError, match=rf'^{label}: label values \[9\] are outside'):
        runner.test()
