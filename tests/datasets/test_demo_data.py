"""The demo set: deterministic, idempotent, read by mmseg, and its labels need context."""
import json
import math

import cv2
import numpy as np
import pytest

from vtseg.datasets.demo import generate_demo_data, main
from vtseg.datasets.vtdemo_scenes import (
    BEACON,
    BEACON_COLORS,
    CLASSES,
    CUED_BLUE,
    CUED_RED,
    DISC_LARGE,
    DISC_SMALL,
    render_sample,
)

SMALL = dict(num_train=5, num_val=3, seed=7, size=64)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def test_same_seed_gives_identical_files(tmp_path):
    generate_demo_data(tmp_path / 'a', verbose=False, **SMALL)
    generate_demo_data(tmp_path / 'b', verbose=False, **SMALL)
    a, b = _files(tmp_path / 'a'), _files(tmp_path / 'b')
    assert len(a) == 2 * (5 + 3) + 1  # images, labels, meta.json
    assert a == b
    generate_demo_data(tmp_path / 'c', verbose=False, **dict(SMALL, seed=8))
    c = _files(tmp_path / 'c')
    images = [k for k in a if str(k).startswith('img_dir')]
    assert all(a[k] != c[k] for k in images)


def test_first_images_do_not_depend_on_the_set_size(tmp_path):
    generate_demo_data(tmp_path / 'a', verbose=False, **SMALL)
    generate_demo_data(tmp_path / 'b', verbose=False, **dict(SMALL, num_train=2))
    a, b = _files(tmp_path / 'a'), _files(tmp_path / 'b')
    for key, data in b.items():
        if key.name != 'meta.json':
            assert a[key] == data, key


def test_generation_is_idempotent(tmp_path, capsys):
    out = tmp_path / 'data'
    assert generate_demo_data(out, verbose=False, **SMALL) is True
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob('*.png')}
    assert generate_demo_data(out, **SMALL) is False
    assert 'nothing to do' in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob('*.png')} == mtimes
    # Other parameters: regenerated, and no stale files remain.
    assert generate_demo_data(out, verbose=False, **dict(SMALL, num_train=2)) is True
    assert len(list((out / 'img_dir' / 'train').glob('*.png'))) == 2
    assert json.loads((out / 'meta.json').read_text())['spec']['num_train'] == 2
    # A deleted file makes the set incomplete.
    next((out / 'ann_dir' / 'val').glob('*.png')).unlink()
    assert generate_demo_data(out, verbose=False, **dict(SMALL, num_train=2)) is True


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / 'mine.txt').write_text('keep me')
    with pytest.raises(FileExistsError, match='meta.json'):
        generate_demo_data(tmp_path, verbose=False, **SMALL)
    assert (tmp_path / 'mine.txt').read_text() == 'keep me'


@pytest.mark.parametrize('bad, name', [(dict(num_train=0), 'num_train'),
                                       (dict(size=20), 'size'), (dict(seed=-1), 'seed')])
def test_bad_parameters_are_named(tmp_path, bad, name):
    with pytest.raises(ValueError, match=name):
        generate_demo_data(tmp_path / 'x', verbose=False, **dict(SMALL, **bad))


def test_command_line(tmp_path, capsys):
    out = tmp_path / 'cli'
    args = ['--out', str(out), '--num-train', '2', '--num-val', '1', '--size', '48']
    assert main(args) == 0
    assert len(list(out.rglob('*.png'))) == 6
    assert main(['--out', str(tmp_path / 'bad'), '--num-val', '0']) == 2
    assert 'num_val' in capsys.readouterr().err


def _windows(image, mask, k):
    """Byte strings of the k x k image windows lying entirely inside ``mask``."""
    inside = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
    r = k // 2
    return {image[y - r:y + r + 1, x - r:x + r + 1].tobytes() for y, x in zip(*np.nonzero(inside))
            if r <= y < mask.shape[0] - r and r <= x < mask.shape[1] - r}


@pytest.fixture(scope='module')
def scenes():
    return [render_sample(0, 'train', i) for i in range(80)]


def test_beacon_colour_decides_the_cued_class(scenes):
    seen = set()
    distances = []
    for image, label in scenes:
        beacon = label == BEACON
        n, _ = cv2.connectedComponents(beacon.astype(np.uint8))
        assert n == 2, 'exactly one beacon per scene'
        colour = tuple(int(c) for c in image[beacon][0])
        assert (image[beacon] == colour).all()
        cued = {int(c) for c in np.unique(label)} & {CUED_RED, CUED_BLUE}
        assert len(cued) == 1, 'one cued class per scene'
        (cls,) = cued
        assert BEACON_COLORS[cls] == colour
        seen.add(cls)
        # The beacon is elsewhere: never touching a cued object, mostly far away.
        by, bx = np.nonzero(beacon)
        cy, cx = np.nonzero(label == cls)
        gap = np.sqrt((by[:, None] - cy[None]) ** 2 + (bx[:, None] - cx[None]) ** 2)
        assert gap.min() >= 3
        distances.append(np.median(gap))
    assert seen == {CUED_RED, CUED_BLUE}
    assert np.median(distances) > 20  # pixels, in 96x96 scenes


def test_local_texture_cannot_tell_the_paired_classes_apart(scenes):
    """Every 7x7 window inside a cued_red blob also occurs inside cued_blue blobs (and the
    same for the two disc classes): a classifier that sees only such a window is at chance.
    """
    windows = {c: set() for c in (CUED_RED, CUED_BLUE, DISC_LARGE, DISC_SMALL)}
    for image, label in scenes:
        for cls in windows:
            windows[cls] |= _windows(image, label == cls, 7)
    for a, b in [(CUED_RED, CUED_BLUE), (DISC_LARGE, DISC_SMALL)]:
        assert windows[a] and windows[b], (CLASSES[a], CLASSES[b])
        assert windows[a] == windows[b], (CLASSES[a], CLASSES[b])


def test_disc_classes_are_separated_by_size(scenes):
    areas = {DISC_LARGE: [], DISC_SMALL: []}
    for _, label in scenes:
        for cls in areas:
            n, comp = cv2.connectedComponents((label == cls).astype(np.uint8))
            areas[cls] += [int((comp == i).sum()) for i in range(1, n)]
    assert areas[DISC_LARGE] and areas[DISC_SMALL]
    assert max(areas[DISC_SMALL]) < math.pi * 9 ** 2 < min(areas[DISC_LARGE])


def test_mmseg_reads_the_layout(tmp_path):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    generate_demo_data(tmp_path, verbose=False, **SMALL)
    init_default_scope('mmseg')
    dataset = DATASETS.build(dict(
        type='VTDemoDataset', data_root=str(tmp_path),
        data_prefix=dict(img_path='img_dir/val', seg_map_path='ann_dir/val'),
        pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                  dict(type='PackSegInputs')]))
    assert len(dataset) == 3
    assert dataset.metainfo['classes'] == CLASSES
    sample = dataset[1]
    image, label = render_sample(7, 'val', 1, 64)
    # LoadImageFromFile reads BGR; PackSegInputs gives (3, H, W).
    assert np.array_equal(sample['inputs'].numpy().transpose(1, 2, 0)[..., ::-1], image)
    assert np.array_equal(sample['data_samples'].gt_sem_seg.data[0].numpy(), label)
