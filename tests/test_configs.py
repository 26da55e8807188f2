"""Every config parses and builds; names say what is inside; FPN/VT-FPN pairs differ only in
the neck; the paper configs carry the paper's recipe; their data pipelines run."""
import ast
import copy
import json
import re
from pathlib import Path

import cv2
import mmengine
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmseg.registry import DATASETS, MODELS

import vtseg  # noqa: F401
from vtseg.analysis.config_model import build_model_from_config
from vtseg.analysis.paper_tables import PAPER_TABLES_9_10

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'configs'
CONFIGS = sorted(p for p in CONFIG_DIR.rglob('*.py') if '_base_' not in p.parts)
IDS = [str(p.relative_to(CONFIG_DIR)) for p in CONFIGS]
NAME = re.compile(r'^(?P<neck>vtfpn|fpn)_r(?P<depth>\d+)_(?P<dataset>[^.]+)\.py$')
PAPER_CONFIGS = [CONFIG_DIR / r.config_name for r in PAPER_TABLES_9_10]
#: What a dataset name in a paper config file name promises.
DATASETS_BY_NAME = {'lip': ('LIPDataset', 20), 'coco-stuff164k': ('COCOStuffDataset', 171)}
LIP_PAIRS = [(14, 15), (16, 17), (18, 19)]


def load(path: Path) -> Config:
    return Config.fromfile(str(path))


def inheritance_depth(path: Path) -> int:
    """Number of `_base_` hops from ``path`` to its deepest base file."""
    tree = ast.parse(path.read_text())
    bases = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets):
            value = ast.literal_eval(node.value)
            bases = [value] if isinstance(value, str) else list(value)
    return max((1 + inheritance_depth((path.parent / b).resolve()) for b in bases), default=0)


def test_configs_are_found():
    assert len(CONFIGS) > 0, f'no configs under {CONFIG_DIR}'
    missing = [p.name for p in PAPER_CONFIGS if not p.is_file()]
    assert not missing, f'paper configs missing: {missing}'
    assert len(PAPER_CONFIGS) == 8


@pytest.mark.parametrize('path', CONFIGS, ids=IDS)
def test_config_parses_and_builds(path):
    cfg = load(path)
    assert cfg.custom_imports == dict(imports=['vtseg'], allow_failed_imports=False)
    assert inheritance_depth(path) <= 3
    # One `model = dict(...)` per file: a second one silently replaces the first.
    assert len(re.findall(r'^model\s*=', path.read_text(), flags=re.M)) <= 1
    model, _, _ = build_model_from_config(cfg)  # pretrained weights switched off
    assert model.backbone is not None and model.decode_head is not None


@pytest.mark.parametrize('path', [p for p in CONFIGS if NAME.match(p.name)],
                         ids=[i for i, p in zip(IDS, CONFIGS) if NAME.match(p.name)])
def test_config_name_states_what_is_inside(path):
    match = NAME.match(path.name)
    cfg = load(path)
    model = cfg.model
    assert model.neck.type == {'fpn': 'FPN', 'vtfpn': 'VTFPN'}[match['neck']]
    assert model.backbone.depth == int(match['depth'])
    dataset = match['dataset']
    types = {dl.dataset.type for dl in (cfg.train_dataloader, cfg.val_dataloader,
                                        cfg.test_dataloader)}
    assert len(types) == 1, types
    (dataset_type,) = types
    if dataset in DATASETS_BY_NAME:
        assert (dataset_type, model.decode_head.num_classes) == DATASETS_BY_NAME[dataset]
    else:  # e.g. 'vtdemo' -> VTDemoDataset
        assert dataset_type.lower().removesuffix('dataset') in dataset.replace('-', '')
    init_default_scope('mmseg')
    classes = DATASETS.get(dataset_type).METAINFO['classes']
    assert model.decode_head.num_classes == len(classes)


def fpn_vtfpn_pairs():
    pairs = []
    for vt in CONFIGS:
        if vt.name.startswith('vtfpn_'):
            pairs.append((vt.with_name(vt.name[2:]), vt))
    return pairs


def test_every_vtfpn_config_has_an_fpn_twin():
    pairs = fpn_vtfpn_pairs()
    assert len(pairs) >= 4
    for fpn, vt in pairs:
        assert fpn.is_file(), f'{vt.name} has no FPN baseline {fpn.name}'


@pytest.mark.parametrize('fpn, vt', fpn_vtfpn_pairs(),
                         ids=[v.name for _, v in fpn_vtfpn_pairs()])
def test_pair_differs_only_in_the_neck(fpn, vt):
    a = copy.deepcopy(load(fpn).to_dict())
    b = copy.deepcopy(load(vt).to_dict())
    neck_a, neck_b = a['model'].pop('neck'), b['model'].pop('neck')
    assert neck_a['type'] == 'FPN' and neck_b['type'] == 'VTFPN'
    for key in ('in_channels', 'out_channels', 'num_outs'):
        assert neck_a[key] == neck_b[key], key
    assert a == b


# ---------------------------------------------------------------------------------------
# The paper's recipe (PAPER.md Sec. 5), written in the configs.

@pytest.mark.parametrize('path', PAPER_CONFIGS, ids=lambda p: p.name)
def test_paper_backbone_is_msra_resnet(path):
    cfg = load(path)
    backbone = cfg.model.backbone
    assert backbone.type == 'ResNet' and backbone.style == 'caffe'
    assert not backbone.get('deep_stem', False)
    checkpoint = backbone.init_cfg.checkpoint
    assert checkpoint == f'open-mmlab://detectron2/resnet{backbone.depth}_caffe'
    # The name exists in mmengine's model zoo (it is not invented).
    zoo = json.loads((Path(mmengine.__file__).parent / 'hub' / 'openmmlab.json').read_text())
    assert 'msra' in zoo[checkpoint.removeprefix('open-mmlab://')]
    # Caffe-style input for the MSRA weights: BGR, 0-255, mean only.
    dp = cfg.model.data_preprocessor
    assert (dp.mean, dp.std, dp.bgr_to_rgb) == ([103.530, 116.280, 123.675], [1.0] * 3, False)
    assert cfg.model.decode_head.type == 'FPNHead' and cfg.model.decode_head.channels == 128
    assert cfg.model.get('pretrained') is None
    if cfg.model.neck.type == 'VTFPN':
        neck = cfg.model.neck
        assert (neck.num_tokens, neck.token_channels) == (8, 1024)
        assert neck.norm_cfg.type == 'SyncBN'


@pytest.mark.parametrize('name', ['fpn_r50_lip.py', 'vtfpn_r101_lip.py'])
def test_lip_recipe(name):
    cfg = load(CONFIG_DIR / name)
    assert cfg.optim_wrapper.optimizer == dict(type='SGD', lr=0.01, momentum=0.9,
                                               weight_decay=0.0005)
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=96)
    assert 8 * cfg.train_dataloader.batch_size == 96  # 8 GPUs x 12
    assert cfg.crop_size == (473, 473)
    flips = [t for t in cfg.train_pipeline if t.type == 'RandomFlip']
    assert len(flips) == 1
    assert [tuple(p) for p in flips[0].swap_seg_labels] == LIP_PAIRS
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'


def test_lip_swapped_classes_are_left_right_pairs():
    init_default_scope('mmseg')
    classes = DATASETS.get('LIPDataset').METAINFO['classes']
    for left, right in LIP_PAIRS:
        assert classes[left].startswith('Left-') and classes[right].startswith('Right-')
        assert classes[left][5:] == classes[right][6:]


@pytest.mark.parametrize('name', ['fpn_r50_coco-stuff164k.py', 'vtfpn_r101_coco-stuff164k.py'])
def test_coco_stuff_recipe(name):
    cfg = load(CONFIG_DIR / name)
    assert cfg.optim_wrapper.optimizer.lr == 0.04
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=32)
    assert 8 * cfg.train_dataloader.batch_size == 32  # 8 GPUs x 4
    assert cfg.train_cfg.max_iters == 90000
    warmup, steps = cfg.param_scheduler
    assert warmup.type == 'LinearLR' and warmup.end == 1000
    assert steps.type == 'MultiStepLR' and steps.milestones == [60000, 80000]
    assert steps.gamma == 0.1
    resize = cfg.train_pipeline[2]
    assert resize.type == 'RandomChoiceResize' and resize.resize_type == 'ResizeShortestEdge'
    assert (min(resize.scales), max(resize.scales), resize.max_size) == (640, 800, 1333)


# ---------------------------------------------------------------------------------------
# The data pipelines run on files laid out as docs/datasets.md describes.

def _write_pair(img_path: Path, seg_path: Path, h: int, w: int, num_classes: int) -> None:
    rng = np.random.default_rng(0)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    seg_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img_path), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    cv2.imwrite(str(seg_path), rng.integers(0, num_classes, (h, w), dtype=np.uint8))


def _dataset(cfg: Config, split: str, data_root: Path):
    init_default_scope('mmseg')
    ds_cfg = copy.deepcopy(cfg[f'{split}_dataloader'].dataset)
    ds_cfg.data_root = str(data_root)
    return DATASETS.build(ds_cfg)


def test_lip_pipelines_on_the_documented_layout(tmp_path):
    cfg = load(CONFIG_DIR / 'vtfpn_r50_lip.py')
    for split in ('train', 'val'):
        _write_pair(tmp_path / f'{split}_images' / 'p1.jpg',
                    tmp_path / f'{split}_segmentations' / 'p1.png', 301, 157, 20)
    train = _dataset(cfg, 'train', tmp_path)[0]
    assert train['inputs'].shape[0] == 3
    assert max(train['inputs'].shape[1:]) <= 473
    val = _dataset(cfg, 'val', tmp_path)[0]
    assert tuple(val['inputs'].shape[1:]) == (473, 473)  # the paper's FLOPs size
    assert val['data_samples'].gt_sem_seg.data.shape[1:] == (301, 157)  # scored at full size
    # Training crops are padded to 473x473 by the data preprocessor.
    model = MODELS.build(cfg.model.data_preprocessor)
    batch = model(dict(inputs=[train['inputs']], data_samples=[train['data_samples']]), True)
    assert tuple(batch['inputs'].shape) == (1, 3, 473, 473)


def test_lip_flip_swaps_left_and_right(tmp_path):
    cfg = load(CONFIG_DIR / 'fpn_r50_lip.py')
    flip = Compose([dict(cfg.train_pipeline[4], prob=1.0)])
    seg = np.array([[14, 15, 16, 17, 18, 19, 13]], dtype=np.uint8)
    out = flip(dict(img=np.zeros((1, 7, 3), np.uint8), gt_seg_map=seg.copy(),
                    seg_fields=['gt_seg_map']))
    assert out['gt_seg_map'].tolist() == [[13, 18, 19, 16, 17, 14, 15]]


def test_lip_tta_pipeline_runs(tmp_path):
    cfg = load(CONFIG_DIR / 'fpn_r50_lip.py')
    _write_pair(tmp_path / 'a.jpg', tmp_path / 'a.png', 90, 50, 20)
    init_default_scope('mmseg')
    out = Compose(cfg.tta_pipeline)(dict(img_path=str(tmp_path / 'a.jpg'),
                                         seg_map_path=str(tmp_path / 'a.png'),
                                         reduce_zero_label=False, seg_fields=[]))
    assert [tuple(x.shape[1:]) for x in out['inputs']] == [(354, 354), (473, 473), (591, 591)]


def test_coco_stuff_pipelines_on_the_documented_layout(tmp_path):
    cfg = load(CONFIG_DIR / 'fpn_r50_coco-stuff164k.py')
    for split in ('train2017', 'val2017'):
        _write_pair(tmp_path / 'images' / split / '000000000001.jpg',
                    tmp_path / 'annotations' / split / '000000000001_labelTrainIds.png',
                    48, 64, 171)
    torch.manual_seed(0)
    train = _dataset(cfg, 'train', tmp_path)[0]
    h, w = train['inputs'].shape[1:]
    assert 640 <= h <= 800 and w == round(h * 64 / 48)  # short side 640-800, ratio kept
    val = _dataset(cfg, 'val', tmp_path)[0]
    assert tuple(val['inputs'].shape[1:]) == (800, 1067)  # short side 800
    model = MODELS.build(cfg.model.data_preprocessor)
    batch = model(dict(inputs=[train['inputs']], data_samples=[train['data_samples']]), True)
    assert all(s % 32 == 0 for s in batch['inputs'].shape[2:])  # detectron2's padding


# ---------------------------------------------------------------------------------------
# One training iteration of the full recipe (model, optimizer, schedulers, hooks) on CPU.

@pytest.mark.slow
@pytest.mark.parametrize('name', ['vtfpn_r50_lip.py', 'vtfpn_r50_coco-stuff164k.py'])
def test_paper_config_trains_one_iteration(tmp_path, name):
    from mmengine.hooks import Hook
    from mmengine.runner import Runner
    cfg = load(CONFIG_DIR / name)
    data = tmp_path / 'data'
    if 'lip' in name:
        for i in range(2):
            _write_pair(data / 'train_images' / f'p{i}.jpg',
                        data / 'train_segmentations' / f'p{i}.png', 120, 80, 20)
    else:
        for i in range(2):
            _write_pair(data / 'images' / 'train2017' / f'{i:012d}.jpg',
                        data / 'annotations' / 'train2017' / f'{i:012d}_labelTrainIds.png',
                        48, 64, 171)
        # Keep the CPU run small: short side 64-96 instead of 640-800.
        cfg.train_pipeline[2].update(scales=[64, 96], max_size=160)
        cfg.train_dataloader.dataset.pipeline = cfg.train_pipeline
    cfg.model.backbone.init_cfg = None
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.data_root = str(data)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=1)
    for key in ('val_dataloader', 'val_cfg', 'val_evaluator', 'test_dataloader', 'test_cfg',
                'test_evaluator'):
        cfg[key] = None
    cfg.default_hooks.visualization = dict(type='SegVisualizationHook', draw=False)
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    model = runner.model
    before = {}

    class Snapshot(Hook):  # weights after init_weights, before the iteration
        def before_train_iter(self, runner, batch_idx, data_batch=None):
            before.update({k: v.clone() for k, v in model.state_dict().items()})

    runner.register_hook(Snapshot())
    runner.train()
    after = model.state_dict()
    frozen = [k for k in after if k.startswith(('backbone.conv1', 'backbone.bn1',
                                                'backbone.layer1'))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), \
        'frozen stages (stem, layer1) changed'
    neck = [k for k in after if k.startswith('neck.')]
    assert any(not torch.equal(before[k], after[k]) for k in neck), 'the neck did not train'
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert np.isfinite(loss)
