"""Bad settings, bad data, broken checkpoints and low precision: vtseg fails clearly or copes.

Each test names the behaviour it pins; each would fail if that behaviour were removed.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
import types
import zipfile

import cv2
import numpy as np
import pytest
import torch
from helpers import NECK, make_lip, model_cfg, train_cfg
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint
from mmseg.registry import MODELS
from torch.utils.data import DataLoader

import vtseg  # noqa: F401  (registers VTFPN; checkpoints load weights-only)
from vtseg.checkpoint import (
    AtomicLocalBackend,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointReportHook,
    check_checkpoint_file,
    compare_state_dicts,
    find_resumable_checkpoint,
    register_checked_loader,
)
from vtseg.datasets import loading
from vtseg.datasets.checks import DatasetNotFoundError, check_data_cfg
from vtseg.datasets.loading import BadSampleError, SkippedSamplesHook, skipped_samples
from vtseg.engine.preflight import ModelConfigError, check_model_forward

init_default_scope('mmseg')

def weights(path: str) -> dict:
    return torch.load(path, map_location='cpu')['state_dict']


# --------------------------------------------------------------- 1. model settings
@pytest.mark.parametrize('override, names', [
    (dict(num_tokens=0), ['num_tokens', 'positive integer']),
    (dict(num_tokens=-8), ['num_tokens', 'positive integer']),
    (dict(token_channels=0), ['token_channels', 'positive integer']),
    (dict(token_channels=32.0), ['token_channels', 'positive integer']),
    (dict(num_heads=3), ['num_heads=3', 'token_channels=32', '[1, 2, 4, 8, 16, 32]']),
    (dict(token_channels=24, num_heads=16), ['num_heads=16', '[1, 2, 3, 4, 6, 8, 12, 24]']),
    (dict(in_channels=[]), ['in_channels', 'non-empty list']),
    (dict(in_channels=[8, 0, 32, 64]), ['in_channels', 'positive integers']),
    (dict(num_outs=3), ['num_outs=3', 'num_outs >= 4']),
])
def test_vtfpn_bad_settings_fail_at_build_naming_argument(override, names):
    with pytest.raises(ValueError) as err:
        MODELS.build({**NECK, **override})
    for name in names:
        assert name in str(err.value), str(err.value)


def test_projector_token_width_must_be_positive():
    # The projector reads tokens of any positive width through W_V (C_T -> C); a width
    # that cannot feed it is rejected where it is set.
    from vtseg.models.layers import Projector
    with pytest.raises(ValueError, match='token_channels must be a positive integer'):
        Projector(16, 0)
    proj = Projector(16, 48)  # C_T != C: a value projection appears
    out = proj(torch.randn(1, 16, 3, 5), torch.randn(1, 4, 48))
    assert out.shape == (1, 16, 3, 5)


def test_vtfpn_inputs_that_do_not_match_in_channels_are_named():
    neck = MODELS.build(NECK)
    feats = [torch.randn(1, c, s, s) for c, s in zip([8, 16, 32, 64], [8, 4, 2, 1])]
    with pytest.raises(ValueError, match=r'built for 4 input levels.*got 3.*out_indices'):
        neck(feats[:3])
    feats[2] = torch.randn(1, 48, 2, 2)
    with pytest.raises(ValueError, match=r'level 2 .*in_channels\[2\]=32.*\[8, 16, 48, 64\]'):
        neck(feats)


def test_parts_that_do_not_fit_fail_before_training_naming_the_part():
    # in_channels for 3 levels, backbone out_indices gives 4
    model = MODELS.build(model_cfg(neck={**NECK, 'in_channels': [8, 16, 32]}))
    with pytest.raises(ModelConfigError) as err:
        check_model_forward(model, (32, 32))
    msg = str(err.value)
    assert msg.startswith('model.neck (VTFPN)') and 'in_channels=[8, 16, 32]' in msg
    assert '(1, 64, 1, 1)]' in msg and model.training  # shapes shown, mode restored
    # decode_head.in_channels not updated after changing the neck's out_channels
    model = MODELS.build(model_cfg(neck={**NECK, 'out_channels': 24}))
    with pytest.raises(ModelConfigError, match=r'(?s)model.decode_head \(FPNHead\).*'
                       r'in_channels=\[16, 16, 16, 16\]'):
        check_model_forward(model)
    check_model_forward(MODELS.build(model_cfg()))  # a model that fits passes


# ------------------------------------------------------------- 2. dataset folders
def _data_cfg(dataset: dict) -> Config:
    return Config(dict(train_dataloader=dict(dataset=dataset)))


def _lip(root, **kw):
    return dict(type='LIPDataset', data_root=root,
                data_prefix=dict(img_path='train_images', seg_map_path='train_segmentations'),
                pipeline=[], **kw)


def test_missing_dataset_folder_names_it_and_how_to_prepare(tmp_path):
    root = str(tmp_path / 'LIP')
    with pytest.raises(DatasetNotFoundError) as err:
        check_data_cfg(_data_cfg(_lip(root)))
    msg = str(err.value)
    assert osp.join(root, 'train_images') in msg and 'does not exist' in msg
    assert 'data/LIP/train_segmentations/*.png' in msg  # how to lay it out
    assert 'train_dataloader.dataset.data_root=' in msg  # how to point at another copy


def test_empty_dataset_folder_is_reported_not_a_concatenate_error(tmp_path):
    os.makedirs(tmp_path / 'train_images')
    os.makedirs(tmp_path / 'train_segmentations')
    with pytest.raises(DatasetNotFoundError, match=r'holds no "\*\.jpg" file'):
        check_data_cfg(_data_cfg(_lip(str(tmp_path))))
    # What mmseg itself says about the same folder, for comparison:
    from mmseg.datasets import LIPDataset
    with pytest.raises(ValueError, match='need at least one array to concatenate'):
        LIPDataset(**{k: v for k, v in _lip(str(tmp_path)).items() if k != 'type'})


def test_coco_stuff_without_train_ids_points_to_converter(tmp_path):
    root = tmp_path / 'coco_stuff164k'
    os.makedirs(root / 'images' / 'train2017')
    os.makedirs(root / 'annotations' / 'train2017')
    cv2.imwrite(str(root / 'images' / 'train2017' / '000000000009.jpg'),
                np.zeros((8, 8, 3), np.uint8))
    # Raw stuffthingmaps were unzipped but mmseg's converter was not run.
    cv2.imwrite(str(root / 'annotations' / 'train2017' / '000000000009.png'),
                np.zeros((8, 8), np.uint8))
    dataset = dict(type='COCOStuffDataset', data_root=str(root),
                   data_prefix=dict(img_path='images/train2017',
                                    seg_map_path='annotations/train2017'), pipeline=[])
    with pytest.raises(DatasetNotFoundError) as err:
        check_data_cfg(_data_cfg(dict(type='RepeatDataset', times=2, dataset=dataset)))
    msg = str(err.value)
    assert 'train_dataloader.dataset.dataset (COCOStuffDataset)' in msg
    assert '1 of 1 images' in msg and '_labelTrainIds.png' in msg
    assert 'coco_stuff164k.py' in msg


def test_complete_dataset_passes_and_is_counted(tmp_path):
    make_lip(str(tmp_path), n=3)
    cfg = _data_cfg(dict(type='ConcatDataset', datasets=[_lip(str(tmp_path))] * 2))
    assert check_data_cfg(cfg) == {'train_dataloader': 6}


# ------------------------------------------------------------------ 3. bad samples
def _lip_dataset(root, on_error='raise', num_classes=None, test_mode=False):
    from mmseg.datasets import LIPDataset
    pipeline = [dict(type='CheckedLoadImageFromFile', on_error=on_error),
                dict(type='CheckedLoadAnnotations', on_error=on_error,
                     num_classes=num_classes)]
    kw = {k: v for k, v in _lip(root).items() if k not in ('type', 'pipeline')}
    return LIPDataset(pipeline=pipeline, test_mode=test_mode, **kw)


def _truncate(path: str, keep: float = 0.5) -> None:
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * keep)])


@pytest.mark.parametrize('broken', ['image', 'label'])
def test_truncated_file_error_names_it(tmp_path, broken):
    root = make_lip(str(tmp_path), n=2)
    path = osp.join(root, 'train_images/001.jpg') if broken == 'image' \
        else osp.join(root, 'train_segmentations/001.png')
    _truncate(path)
    dataset = _lip_dataset(root)
    dataset[0]  # the intact sample loads
    with pytest.raises(BadSampleError, match=rf'{path}: cannot read {broken}'):
        dataset[1]


def test_label_map_of_other_size_is_an_error_naming_both_files(tmp_path):
    root = make_lip(str(tmp_path), n=2)
    label = osp.join(root, 'train_segmentations/000.png')
    cv2.imwrite(label, np.zeros((30, 32), np.uint8))
    with pytest.raises(BadSampleError) as err:
        _lip_dataset(root)[0]
    msg = str(err.value)
    assert msg.startswith(label) and '30x32' in msg and '000.jpg is 32x32' in msg


def test_label_values_outside_the_classes_are_an_error(tmp_path):
    root = make_lip(str(tmp_path), n=1)
    label = osp.join(root, 'train_segmentations/000.png')
    seg = np.full((32, 32), 255, np.uint8)  # 255 (ignore) is fine ...
    seg[0, 0] = 182  # ... a raw COCO-Stuff id is not
    cv2.imwrite(label, seg)
    with pytest.raises(BadSampleError, match=r'000\.png: label values \[182\] are outside'):
        _lip_dataset(root, num_classes=171)[0]
    assert _lip_dataset(root, num_classes=183)[0]['gt_seg_map'].max() == 255


def test_skip_draws_another_sample_and_counts_across_workers(tmp_path, caplog):
    root = make_lip(str(tmp_path), n=4)
    bad_image = osp.join(root, 'train_images/001.jpg')
    bad_label = osp.join(root, 'train_segmentations/002.png')
    _truncate(bad_image)
    cv2.imwrite(bad_label, np.zeros((16, 16), np.uint8))
    before = len(skipped_samples())
    dataset = _lip_dataset(root, on_error='skip')
    sample = dataset[1]  # mmengine's BaseDataset refetches another index
    assert sample['img_path'] not in (bad_image, osp.join(root, 'train_images/002.jpg'))
    assert skipped_samples()[before][0] == bad_image
    # One worker process: its skips reach the main process's tally.
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=lambda b: b)
    seen = [b[0]['img_path'] for b in loader]
    assert len(seen) == 4 and bad_image not in seen
    skipped = skipped_samples()[before:]
    assert {p for p, _ in skipped} == {bad_image, bad_label} and len(skipped) >= 3
    # The hook reports the total at the end of training.
    logger = logging.getLogger('vtseg-test-skips')
    with caplog.at_level(logging.WARNING, logger='vtseg-test-skips'):
        SkippedSamplesHook().after_train(types.SimpleNamespace(logger=logger))
    assert f'{len(skipped_samples())} times, 2 distinct files' in caplog.text
    assert bad_label in caplog.text


def test_skip_is_refused_at_test_time(tmp_path):
    root = make_lip(str(tmp_path), n=2)
    _truncate(osp.join(root, 'train_images/000.jpg'))
    with pytest.raises(Exception, match='Test time pipline should not get `None`'):
        _lip_dataset(root, on_error='skip', test_mode=True)[0]
    with pytest.raises(ValueError, match="on_error must be one of \\('raise', 'skip'\\)"):
        loading.CheckedLoadImageFromFile(on_error='ignore')


# ---------------------------------------------------------- 5. broken checkpoints
def _save(path, value=0.0):
    torch.save({'state_dict': {'w': torch.full((64, 64), value)}, 'meta': {}}, path)


def test_check_checkpoint_file_detects_truncation_and_corruption(tmp_path):
    good, cut, flipped = (str(tmp_path / n) for n in ('good.pth', 'cut.pth', 'flip.pth'))
    _save(good)
    check_checkpoint_file(good)
    data = open(good, 'rb').read()
    open(cut, 'wb').write(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"'{cut}' \(\d+ bytes\) is truncated"):
        check_checkpoint_file(cut)
    corrupt = bytearray(data)
    with zipfile.ZipFile(good) as z:  # flip a byte inside the tensor record
        info = next(i for i in z.infolist() if i.filename.endswith('data/0'))
    corrupt[info.header_offset + 200] ^= 0xFF
    open(flipped, 'wb').write(bytes(corrupt))
    with pytest.raises(CheckpointError, match='fails its CRC-32 check'):
        check_checkpoint_file(flipped)
    open(cut, 'wb').close()
    with pytest.raises(CheckpointError, match='is empty'):
        check_checkpoint_file(cut)


def test_loading_truncated_checkpoint_names_the_file(tmp_path):
    path = str(tmp_path / 'iter_4.pth')
    _save(path)
    _truncate(path)
    register_checked_loader()
    with pytest.raises(CheckpointError, match=rf"Checkpoint '{path}' .* truncated"):
        load_checkpoint(torch.nn.Linear(64, 64), path, map_location='cpu')


def test_resume_falls_back_past_broken_checkpoints(tmp_path):
    work = str(tmp_path)
    assert find_resumable_checkpoint(work) is None  # fresh start
    for step in (2, 4, 6):
        _save(osp.join(work, f'iter_{step}.pth'), step)
    _truncate(osp.join(work, 'iter_6.pth'))
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:
        f.write(osp.join(work, 'iter_6.pth'))
    assert find_resumable_checkpoint(work) == osp.join(work, 'iter_4.pth')
    # last_checkpoint naming a file that no longer exists
    os.remove(osp.join(work, 'iter_6.pth'))
    os.remove(osp.join(work, 'iter_4.pth'))
    assert find_resumable_checkpoint(work) == osp.join(work, 'iter_2.pth')
    _truncate(osp.join(work, 'iter_2.pth'))
    with pytest.raises(CheckpointError, match='(?s)No readable checkpoint.*iter_2.pth'):
        find_resumable_checkpoint(work)


def test_atomic_put_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / 'iter_2.pth'
    backend = AtomicLocalBackend()
    backend.put(b'old checkpoint', str(target))

    def interrupted(src, dst):
        raise KeyboardInterrupt  # the run is stopped between writing and renaming

    monkeypatch.setattr(os, 'replace', interrupted)
    with pytest.raises(KeyboardInterrupt):
        backend.put(b'new checkpoint, much longer than the old one', str(target))
    assert target.read_bytes() == b'old checkpoint'
    assert os.listdir(tmp_path) == ['iter_2.pth']  # no temporary file left behind


def test_atomic_put_keeps_the_usual_file_permissions(tmp_path):
    target = tmp_path / 'iter_2.pth'
    AtomicLocalBackend().put(b'checkpoint', str(target))
    plain = tmp_path / 'plain'
    plain.write_bytes(b'x')
    assert (target.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777)


def test_safe_hook_keeps_previous_checkpoint_until_new_one_is_saved(tmp_path, monkeypatch):
    data = make_lip(str(tmp_path / 'LIP'))
    work = str(tmp_path / 'work')
    cfg = train_cfg(data, work, max_iters=4)
    cfg.default_hooks.checkpoint.max_keep_ckpts = 1
    runner = Runner.from_cfg(cfg)
    real_put = AtomicLocalBackend.put

    def put(self, obj, filepath):
        if str(filepath).endswith('iter_4.pth'):
            raise OSError(28, 'No space left on device')
        return real_put(self, obj, filepath)

    monkeypatch.setattr(AtomicLocalBackend, 'put', put)
    with pytest.raises(OSError, match='No space left'):
        runner.train()
    # mmengine's CheckpointHook deletes iter_2.pth *before* writing iter_4.pth.
    assert sorted(f for f in os.listdir(work) if f.endswith('.pth')) == ['iter_2.pth']
    assert open(osp.join(work, 'last_checkpoint')).read().endswith('iter_2.pth')
    check_checkpoint_file(osp.join(work, 'iter_2.pth'))


@pytest.mark.slow
def test_resume_from_truncated_latest_checkpoint_matches_uninterrupted_run(tmp_path):
    data = make_lip(str(tmp_path / 'LIP'))
    full, cut = str(tmp_path / 'full'), str(tmp_path / 'cut')
    Runner.from_cfg(train_cfg(data, full, max_iters=6)).train()
    Runner.from_cfg(train_cfg(data, cut, max_iters=4)).train()
    _truncate(osp.join(cut, 'iter_4.pth'))  # a save interrupted by a non-atomic writer
    runner = Runner.from_cfg(train_cfg(data, cut, max_iters=6, resume=True))
    runner.train()
    assert runner._load_from == osp.join(cut, 'iter_2.pth')  # chosen by SafeCheckpointHook
    assert runner.iter == 6
    a, b = weights(osp.join(full, 'iter_6.pth')), weights(osp.join(cut, 'iter_6.pth'))
    assert a.keys() == b.keys()
    for key in a:  # bitwise: dropout masks included (the RNG state is resumed too)
        assert torch.equal(a[key], b[key]), key


# ---------------------------------------------- 6. checkpoints of other models
def _fake_runner(model, resume=False, load_from='other.pth'):
    return types.SimpleNamespace(model=model, _resume=resume, _load_from=load_from,
                                 logger=logging.getLogger('vtseg-test-load'))


def test_other_class_count_is_refused_with_both_shapes_then_allowed(caplog):
    ckpt = {'state_dict': MODELS.build(model_cfg(num_classes=171)).state_dict()}
    model = MODELS.build(model_cfg(num_classes=20))
    with pytest.raises(CheckpointMismatchError) as err:
        CheckpointReportHook().after_load_checkpoint(_fake_runner(model), ckpt)
    msg = str(err.value)
    assert 'decode_head.conv_seg.weight: (171, 8, 1, 1) -> (20, 8, 1, 1)' in msg
    assert 'decode_head.conv_seg.bias: (171,) -> (20,)' in msg
    assert 'allow_shape_mismatch=True' in msg
    n = len([k for k in model.state_dict() if not k.endswith('num_batches_tracked')])
    assert f'loads {n - 2} of {n} model tensors' in msg
    with caplog.at_level(logging.WARNING, logger='vtseg-test-load'):
        CheckpointReportHook(allow_shape_mismatch=True).after_load_checkpoint(
            _fake_runner(model), ckpt)
    assert '2 tensors differ in shape and keep their initial values' in caplog.text
    # A resumed checkpoint must match exactly, whatever the hook allows.
    with pytest.raises(CheckpointMismatchError, match='must match the model exactly'):
        CheckpointReportHook(allow_shape_mismatch=True).after_load_checkpoint(
            _fake_runner(model, resume=True), ckpt)


def test_checkpoint_of_other_neck_lists_missing_and_unexpected_keys():
    fpn = dict(type='FPN', in_channels=[8, 16, 32, 64], out_channels=16, num_outs=4)
    state = MODELS.build(model_cfg(neck=fpn)).state_dict()
    report = compare_state_dicts(MODELS.build(model_cfg()), {f'module.{k}': v
                                                             for k, v in state.items()})
    assert report.shape_mismatch == {}
    assert 'neck.tokenizers.0.token_filters' in report.missing
    assert 'neck.fpn_convs.0.conv.weight' in report.unexpected
    # The laterals are common to FPN and VTFPN (same names and shapes): they load.
    assert {k.split('.')[0] for k in report.loaded} == {'backbone', 'neck', 'decode_head'}
    assert all(k.startswith('neck.lateral_convs.') for k in report.loaded if 'neck' in k)
    text = report.format('FPN checkpoint')
    assert 'model tensors missing from the checkpoint' in text and '(ignored)' in text
    with pytest.raises(CheckpointMismatchError, match='no tensor of the model'):
        CheckpointReportHook().after_load_checkpoint(
            _fake_runner(MODELS.build(model_cfg())), {'state_dict': {'x': torch.zeros(1)}})


def test_runner_load_from_other_classes_is_refused_before_loading(tmp_path):
    data = make_lip(str(tmp_path / 'LIP'))
    ckpt = str(tmp_path / 'coco.pth')
    source = MODELS.build(model_cfg(num_classes=171))
    torch.save({'state_dict': source.state_dict(), 'meta': {}}, ckpt)
    cfg = train_cfg(data, str(tmp_path / 'w'), max_iters=1, num_classes=20, load_from=ckpt)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(CheckpointMismatchError, match=r'\(171, 8, 1, 1\) -> \(20, 8, 1, 1\)'):
        runner.train()
    # Refused before mmengine loaded anything: nothing is half-loaded.
    assert not torch.equal(runner.model.backbone.stem[0].weight, source.backbone.stem[0].weight)
    # Fine-tuning on purpose: everything but the classifier is loaded.
    cfg.default_hooks.checkpoint_report.allow_shape_mismatch = True
    runner = Runner.from_cfg(cfg)
    runner.load_checkpoint(ckpt)
    assert torch.equal(runner.model.backbone.stem[0].weight, source.backbone.stem[0].weight)
    assert runner.model.decode_head.conv_seg.weight.shape == (20, 8, 1, 1)


# ------------------------------------------------------------------- 7. numerics
def _finite_training_steps(model, inputs, labels, device_type, dtype, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(steps):
        with torch.autocast(device_type, dtype=dtype):
            feats = model.extract_feat(inputs)
            logits = model.decode_head(feats)
            logits = torch.nn.functional.interpolate(logits.float(), size=labels.shape[-2:],
                                                     mode='bilinear', align_corners=False)
            loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    return losses


@pytest.mark.slow
def test_vtfpn_trains_under_bfloat16_autocast_on_cpu():
    torch.manual_seed(0)
    model = MODELS.build(model_cfg(dropout=0.0)).train()
    # 576x576: stride 4 gives 144x144 = 20,736 pixels in each first-level token softmax.
    inputs = torch.randn(2, 3, 576, 576) * 3
    labels = torch.randint(0, 4, (2, 576, 576))
    _finite_training_steps(model, inputs, labels, 'cpu', torch.bfloat16, steps=2)
    # The neck's bf16 output stays close to float32's (small attention weights survive).
    neck = model.neck.eval()
    with torch.no_grad():
        feats = model.backbone(inputs[:1])
        ref = neck(feats)[0]
        with torch.autocast('cpu', dtype=torch.bfloat16):
            low = neck(feats)[0].float()
    assert ((low - ref).norm() / ref.norm()).item() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason='float16 autocast needs CUDA')
def test_vtfpn_trains_under_float16_autocast_on_gpu():
    torch.manual_seed(0)
    model = MODELS.build(model_cfg(dropout=0.0)).cuda().train()
    inputs = torch.randn(2, 3, 576, 576, device='cuda') * 3
    labels = torch.randint(0, 4, (2, 576, 576), device='cuda')
    _finite_training_steps(model, inputs, labels, 'cuda', torch.float16)


@pytest.mark.parametrize('size', [(1, 1), (5, 97), (31, 33), (32, 64), (65, 17)])
def test_any_input_size_gives_output_of_that_size(size):
    torch.manual_seed(0)
    model = MODELS.build(model_cfg()).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, *size))
        assert feats[-1].shape[-2:] == torch.Size(
            [-(-s // 32) for s in size])  # 1 pixel wide at the smallest level for s <= 32
        logits = model.encode_decode(torch.randn(1, 3, *size), [dict(img_shape=size)])
    assert logits.shape == (1, 4, *size)
    assert torch.isfinite(logits).all()
