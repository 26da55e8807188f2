"""vtseg.deploy.processing redoes mmcv's and mmseg's pre- and post-processing exactly."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vtseg.deploy.processing import (
    check_image,
    overlay,
    pad_image,
    pipeline_resize_shape,
    resize_image,
    resize_logits,
)
from vtseg.deploy.spec import DeployError, DeploySpec
from vtseg.deploy.verify import relative_error

SIZES = [(96, 96), (50, 71), (123, 40), (473, 600)]


@pytest.mark.parametrize('transform', [
    dict(type='Resize', scale=(473, 473), keep_ratio=False),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True),
    dict(type='Resize', scale=(90, 60), keep_ratio=True),
    dict(type='ResizeShortestEdge', scale=80, max_size=133),
    dict(type='ResizeShortestEdge', scale=100, max_size=1000),
])
def test_resize_matches_the_mmseg_transform(transform):
    from mmengine.registry import init_default_scope
    from mmseg.registry import TRANSFORMS

    init_default_scope('mmseg')
    rule = dict(transform)
    if rule['type'] == 'Resize':
        rule = dict(type='Resize', scale=list(rule['scale']), keep_ratio=rule['keep_ratio'])
    mmseg_transform = TRANSFORMS.build(transform)
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = mmseg_transform(dict(img=img.copy(), img_shape=(h, w), ori_shape=(h, w)))['img']
        out = resize_image(img, rule)
        assert out.shape == ref.shape, (h, w, transform)
        assert pipeline_resize_shape((h, w), rule) == ref.shape[:2]
        np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('align_corners', [False, True])
@pytest.mark.parametrize('size', [(96, 96), (37, 121), (10, 7)])
def test_resize_logits_matches_interpolate(size, align_corners):
    x = torch.randn(5, 24, 31, generator=torch.Generator().manual_seed(0)) * 3
    ref = F.interpolate(x[None], size=size, mode='bilinear', align_corners=align_corners)[0]
    out = resize_logits(x.numpy(), size, align_corners)
    assert out.shape == tuple(ref.shape)
    # float32 rounding only (the order of the sums differs): 1.6e-6 at most over 30 seeds
    assert relative_error(out, ref.numpy()) < 1e-5


@pytest.mark.parametrize('test_cfg', [dict(size_divisor=32), dict(size=(64, 96)),
                                      dict(size_divisor=16)])
def test_padding_matches_the_data_preprocessor(test_cfg):
    from mmseg.models import SegDataPreProcessor

    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    dp = SegDataPreProcessor(mean=mean, std=std, bgr_to_rgb=True, pad_val=3,
                             test_cfg=test_cfg)
    spec = DeploySpec(mean=mean, std=std, channel_flip=True,
                      pad_size=list(test_cfg['size']) if 'size' in test_cfg else None,
                      size_divisor=test_cfg.get('size_divisor'),
                      pad_raw=[3 * s + m for s, m in zip(std, mean)][::-1])
    rng = np.random.default_rng(0)
    for h, w in [(50, 70), (64, 64), (33, 95)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        from mmseg.structures import SegDataSample

        ref = dp(dict(inputs=[torch.from_numpy(img).permute(2, 0, 1)],
                      data_samples=[SegDataSample()]), False)['inputs'][0]
        padded, hw = pad_image(img, spec)
        assert hw == (h, w) and padded.shape[:2] == tuple(ref.shape[1:])
        assert spec.padded_shape((h, w)) == tuple(ref.shape[1:])
        x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32)).permute(2, 0, 1)
        x = (x[[2, 1, 0]] - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


def test_overlay_matches_mmseg_visualizer():
    from mmengine.structures import PixelData
    from mmseg.visualization import SegLocalVisualizer

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)  # BGR
    labels = rng.integers(0, 4, (40, 52))
    palette = [[0, 0, 0], [255, 0, 0], [0, 200, 30], [10, 20, 250]]
    vis = SegLocalVisualizer(alpha=0.8)
    ref = vis._draw_sem_seg(img[..., ::-1].copy(),
                            PixelData(data=torch.from_numpy(labels)[None]),
                            ['a', 'b', 'c', 'd'], palette, with_labels=False)
    np.testing.assert_array_equal(overlay(img, labels, palette), ref[..., ::-1])


def test_images_with_other_channel_counts_are_refused():
    with pytest.raises(DeployError, match='4 channels.*COLOR_BGRA2BGR'):
        check_image(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(DeployError, match='1 channels.*COLOR_GRAY2BGR'):
        check_image(np.zeros((8, 8), np.uint8))
    assert check_image(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8, 3)
