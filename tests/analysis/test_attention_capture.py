"""Attention capture (vtseg.analysis.attention), drawing (vtseg.visualization) and
tools/visualize_attention.py, on tiny mmseg models built here."""
import importlib.util
import json
import math
import re
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from mmengine.config import Config
from mmengine.model import BaseModule
from mmengine.runner import save_checkpoint
from mmseg.apis import init_model
from mmseg.registry import MODELS
from torch import nn

import vtseg  # noqa: F401  (registers VTFPN, loads checkpoints under torch>=2.6)
from vtseg.analysis.attention import (
    AttentionRecorder,
    attention_entropy,
    find_vt_levels,
    image_attention,
    mix_attention,
    to_image_space,
    uniform_entropy,
)
from vtseg.models.layers import FilterTokenizer, Projector, RecurrentTokenizer, TokenTransformer
from vtseg.visualization import colorize, grid_layout, grid_size, overlay

ROOT = Path(__file__).resolve().parents[2]
NUM_TOKENS = 2


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        'visualize_attention', ROOT / 'tools' / 'visualize_attention.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


# ---------------------------------------------------------------------------------------
# Tiny models


@MODELS.register_module(name='_AttnTestPyramid', force=True)
class _Pyramid(BaseModule):
    """The image itself, average-pooled to strides 4, 8, 16, 32 (3 channels each)."""

    def forward(self, x):
        return tuple(F.avg_pool2d(x, 4 * 2 ** i, ceil_mode=True) for i in range(4))


class _VTModule(nn.Module):
    """Same submodule names as vtseg's VT-ResNet modules: tokenizer, transformer, projector."""

    def __init__(self, channels, recurrent):
        super().__init__()
        kind = RecurrentTokenizer if recurrent else FilterTokenizer
        self.tokenizer = kind(channels, NUM_TOKENS, 16)
        self.transformer = TokenTransformer(16, 2)
        self.projector = Projector(channels, 16)

    def token_groups(self):
        return [(self.transformer, [('tokenizer', self.tokenizer)])]

    def forward(self, x, tokens_in=None):
        args = (x,) if tokens_in is None else (x, tokens_in)
        tokens = self.transformer(self.tokenizer(*args)[0])
        return self.projector(x, tokens), tokens


@MODELS.register_module(name='_AttnTestVTBackbone', force=True)
class _VTBackbone(BaseModule):
    """A stem and two VT modules named ``vt_modules.{i}``, as in VT-ResNet's last stage."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=8, padding=1)
        self.vt_modules = nn.ModuleList([_VTModule(8, False), _VTModule(8, True)])

    def token_groups(self):  # as VT-ResNet declares its modules
        return [(m.transformer, [(f'vt_module{i}', m.tokenizer)])
                for i, m in enumerate(self.vt_modules)]

    def forward(self, x):
        x, tokens = self.vt_modules[0](self.stem(x))
        x, _ = self.vt_modules[1](x, tokens)
        return (x,)


def _model_cfg(neck='VTFPN', backbone=None, **head):
    norm = dict(type='BN')
    backbone = backbone or dict(type='ResNet', depth=18, stem_channels=8, base_channels=8,
                                out_indices=(0, 1, 2, 3), norm_cfg=norm)
    in_channels = [8, 16, 32, 64] if backbone['type'] == 'ResNet' else [3] * 4
    if neck == 'VTFPN':
        neck = dict(type='VTFPN', in_channels=in_channels, out_channels=16, num_outs=4,
                    num_tokens=NUM_TOKENS, token_channels=16, num_heads=2)
    else:
        neck = dict(type='FPN', in_channels=in_channels, out_channels=16, num_outs=4)
    return Config(dict(
        model=dict(
            type='EncoderDecoder',
            data_preprocessor=dict(
                type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0, seg_pad_val=255,
                test_cfg=dict(size_divisor=32)),  # pads the model input: maps must undo it
            backbone=backbone, neck=neck,
            decode_head=dict(type='FPNHead', in_channels=[16] * 4, in_index=[0, 1, 2, 3],
                             feature_strides=[4, 8, 16, 32], channels=8, num_classes=3,
                             norm_cfg=norm, align_corners=False, **head),
            train_cfg=dict(), test_cfg=dict(mode='whole')),
        # Resizing in the test pipeline: maps must be scaled back to the original image.
        test_pipeline=[dict(type='LoadImageFromFile'),
                       dict(type='Resize', scale=(120, 80), keep_ratio=True),
                       dict(type='PackSegInputs')]))


def _vt_resnet_like_cfg():
    cfg = _model_cfg(backbone=dict(type='_AttnTestVTBackbone'))
    cfg.model.neck = None
    cfg.model.decode_head = dict(type='FCNHead', in_channels=8, channels=8, num_convs=1,
                                 concat_input=False, num_classes=2, norm_cfg=dict(type='BN'))
    return cfg


def _build(cfg):
    torch.manual_seed(0)
    return init_model(cfg, device='cpu')


def _image(h=100, w=150, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def _hooks(model):
    return {name: len(m._forward_hooks) for name, m in model.named_modules()
            if m._forward_hooks}


# ---------------------------------------------------------------------------------------
# Capture


def test_find_vt_levels_vtfpn_shares_one_transformer():
    levels = find_vt_levels(_build(_model_cfg()))
    assert [lv.label for lv in levels] == ['level0', 'level1', 'level2', 'level3']
    assert [lv.tokenizer for lv in levels] == [f'neck.tokenizers.{i}' for i in range(4)]
    assert {lv.transformer for lv in levels} == {'neck.transformer'}
    # Level i owns rows i*L .. (i+1)*L - 1 of the transformer over the concatenated tokens.
    assert [lv.token_offset for lv in levels] == [0, 2, 4, 6]


def test_vtfpn_maps_sum_to_one_and_mixing_uses_the_right_rows():
    model = _build(_model_cfg())
    transformer_inputs = []
    handle = model.neck.transformer.register_forward_pre_hook(
        lambda m, args: transformer_inputs.append(args[0]))
    levels = image_attention(model, _image())
    handle.remove()
    assert _hooks(model) == {}

    # Sizes: raw maps at the feature resolution of the padded 80x120 -> 96x128 input.
    assert [tuple(lv.raw.shape) for lv in levels] == [
        (NUM_TOKENS, 24, 32), (NUM_TOKENS, 12, 16), (NUM_TOKENS, 6, 8), (NUM_TOKENS, 3, 4)]
    for lv in levels:
        assert lv.image.shape == lv.mixed.shape == (NUM_TOKENS, 100, 150)
        # Every token map is a distribution over pixels before any colouring.
        for maps in (lv.raw, lv.image, lv.mixed):
            torch.testing.assert_close(maps.sum((-2, -1)), torch.ones(NUM_TOKENS))
            assert (maps >= 0).all()

    # W recomputed from the transformer's own input: head average of softmax(K Q^T).
    tr = model.neck.transformer
    with torch.no_grad():
        t = tr.norm1(transformer_inputs[0])
        k = tr._heads(tr.key(t))
        q = tr._heads(tr.query(t))
        w = torch.softmax(torch.einsum('bhid,bhjd->bhij', k, q) * tr.scale, -1).mean(1)[0]
    assert w.shape == (4 * NUM_TOKENS, 4 * NUM_TOKENS)
    all_maps = torch.cat([lv.image for lv in levels])  # (4 L, H, W), token order
    for i, lv in enumerate(levels):
        rows = w[i * NUM_TOKENS:(i + 1) * NUM_TOKENS]
        torch.testing.assert_close(lv.mixing, rows)
        torch.testing.assert_close(lv.mixed, torch.einsum('ln,nhw->lhw', rows, all_maps))


def test_vt_resnet_like_modules_each_mix_their_own_tokens():
    model = _build(_vt_resnet_like_cfg())
    levels = find_vt_levels(model)
    assert [(lv.label, lv.tokenizer, lv.transformer, lv.token_offset) for lv in levels] == [
        ('vt_module0', 'backbone.vt_modules.0.tokenizer',
         'backbone.vt_modules.0.transformer', 0),
        ('vt_module1', 'backbone.vt_modules.1.tokenizer',
         'backbone.vt_modules.1.transformer', 0)]
    maps = image_attention(model, _image(70, 90))
    for lv in maps:
        assert lv.raw.shape == (NUM_TOKENS, 12, 16)  # 70x90 -> 80x103 -> padded 96x128
        assert lv.mixing.shape == (NUM_TOKENS, NUM_TOKENS)
        torch.testing.assert_close(lv.mixed, mix_attention(lv.image, lv.mixing))
        torch.testing.assert_close(lv.mixed.sum((-2, -1)), torch.ones(NUM_TOKENS))
    assert _hooks(model) == {}


@pytest.mark.skipif(MODELS.get('VTResNet') is None, reason='VTResNet is not in this checkout')
def test_vt_resnet_backbone_levels_and_maps():
    cfg = _model_cfg(backbone=dict(
        type='VTResNet', depth=18, stem_channels=8, base_channels=8, vt_channels=16,
        num_tokens=NUM_TOKENS, token_channels=16, num_heads=2, out_indices=(3,)))
    cfg.model.neck = None
    cfg.model.decode_head = dict(type='FCNHead', in_channels=16, channels=8, num_convs=1,
                                 concat_input=False, num_classes=2,
                                 norm_cfg=dict(type='BN'))
    model = _build(cfg)
    levels = find_vt_levels(model)
    assert [(lv.label, lv.transformer) for lv in levels] == [
        ('vt_module0', 'backbone.vt_modules.0.transformer'),
        ('vt_module1', 'backbone.vt_modules.1.transformer')]
    for lv in image_attention(model, _image(70, 90)):
        assert lv.raw.shape == (NUM_TOKENS, 6, 8)  # 70x90 -> 80x103 -> 96x128, stride 16
        assert lv.mixing.shape == (NUM_TOKENS, NUM_TOKENS)
        torch.testing.assert_close(lv.mixed, mix_attention(lv.image, lv.mixing))
        torch.testing.assert_close(lv.mixed.sum((-2, -1)), torch.ones(NUM_TOKENS))
    assert _hooks(model) == {}


def test_hooks_are_removed_also_after_exceptions():
    model = _build(_model_cfg())
    assert _hooks(model) == {}
    recorder = AttentionRecorder(model)
    with pytest.raises(RuntimeError, match='inside'):
        with recorder:
            # 4 tokenizers + the transformer's softmax are hooked while recording.
            assert sum(_hooks(model).values()) == 5
            raise RuntimeError('inside')
    assert _hooks(model) == {}
    with pytest.raises(RuntimeError):  # the forward pass itself fails: 4 input channels
        with torch.no_grad(), AttentionRecorder(model):
            model(torch.zeros(1, 4, 64, 64), mode='tensor')
    assert _hooks(model) == {}


class _CarryOver(nn.Module):
    """A transformer attending more tokens than its tokenizer extracted."""

    def __init__(self):
        super().__init__()
        self.tokenizer = FilterTokenizer(4, NUM_TOKENS, 8)
        self.transformer = TokenTransformer(8, 2)

    def token_groups(self):  # declares L tokens, attends 2 L
        return [(self.transformer, [('carried', self.tokenizer)])]

    def forward(self, x):
        tokens = self.tokenizer(x)[0]
        return self.transformer(torch.cat([tokens, tokens.flip(1)], 1))


def test_recorder_runs_the_explicit_path_and_restores_the_fused_one():
    """Observing changes nothing: the recorded forward computes what the fused one does
    (up to rounding), and every block is back on its own path afterwards."""
    model = _build(_model_cfg())

    def paths():
        return {n: m.fused_attn for n, m in model.named_modules() if hasattr(m, 'fused_attn')}

    before = paths()
    assert len(before) == 9 and all(before.values())  # 4 tokenizers, transformer, 4 projectors
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        fused = model(x, mode='tensor')
        with AttentionRecorder(model) as rec:
            assert not any(paths().values())
            recorded = model(x, mode='tensor')
    assert paths() == before
    torch.testing.assert_close(recorded, fused, rtol=1e-4, atol=1e-5)
    assert all(lv.attn is not None for lv in rec.collect())


def test_undeclared_tokenizer_is_recorded_without_a_transformer():
    model = nn.Sequential(FilterTokenizer(4, NUM_TOKENS, 8))
    (level,) = find_vt_levels(model)
    assert (level.label, level.tokenizer, level.transformer) == ('0', '0', None)


def test_unmatched_transformer_gives_no_mixing_with_a_warning():
    model = _CarryOver()
    with torch.no_grad(), AttentionRecorder(model) as rec:
        model(torch.randn(1, 4, 5, 6))
    with pytest.warns(UserWarning, match='no transformer-mixed attention for transformer'):
        (captured,) = rec.collect()
    assert captured.level.transformer == 'transformer' and captured.mixing is None
    assert captured.attn.shape == (1, NUM_TOKENS, 5, 6)


def test_two_forward_passes_are_refused():
    model = _build(_model_cfg())
    with torch.no_grad(), AttentionRecorder(model) as rec:
        model(torch.zeros(1, 3, 64, 64), mode='tensor')
        model(torch.zeros(1, 3, 64, 64), mode='tensor')
    with pytest.raises(RuntimeError, match='ran 2 times'):
        rec.collect()


def test_model_without_vt_modules_is_rejected_by_name():
    with pytest.raises(ValueError) as err:
        find_vt_levels(_build(_model_cfg(neck='FPN')))
    msg = str(err.value)
    for expected in ('EncoderDecoder', 'neck=FPN', 'FilterTokenizer', 'PoolingTokenizer',
                     'VTFPN', 'VTResNet'):
        assert expected in msg


def test_entropy_uniform_one_hot_and_mixed():
    h, w = 5, 7
    uniform = torch.full((2, 3, h, w), 1.0 / (h * w))
    torch.testing.assert_close(attention_entropy(uniform),
                               torch.full((2, 3), math.log(h * w), dtype=torch.float64))
    assert uniform_entropy(473, 473) == pytest.approx(12.318, abs=1e-3)  # paper Sec. 6
    one_hot = torch.zeros(h, w)
    one_hot[2, 3] = 1
    assert attention_entropy(one_hot).item() == 0.0
    half = torch.zeros(h, w)
    half[0, :2] = 0.5
    assert attention_entropy(half).item() == pytest.approx(math.log(2))


def test_to_image_space_crops_padding_and_undoes_flip():
    maps = torch.zeros(1, 4, 4)
    maps[0, 0, 0] = 1  # top-left cell of a 4x4 map over a 64x64 padded input
    meta = dict(ori_shape=(30, 60), img_shape=(32, 64), img_padding_size=[0, 0, 0, 32])
    out = to_image_space(maps, (64, 64), meta)
    assert out.shape == (1, 30, 60)
    # The image is the top half of the input: the cell (input rows 0-15) covers the top
    # half of the image and its left quarter; without the crop it would cover a quarter.
    assert out[0, 15:].sum() > 0.1 and out[0, :, :15].sum() > 0.8
    assert out[0, :, 30:].sum() < 1e-6
    flipped = to_image_space(maps, (64, 64), dict(meta, flip=True,
                                                  flip_direction='horizontal'))
    torch.testing.assert_close(flipped, out.flip(-1))


# ---------------------------------------------------------------------------------------
# Drawing


def test_grid_layout_and_overlay():
    assert [grid_layout(n) for n in (1, 2, 8, 16, 5)] == [(1, 1), (1, 2), (2, 4), (4, 4),
                                                          (2, 4)]
    image = _image(20, 30)
    m = torch.zeros(20, 30)
    m[3, 4] = 1
    assert overlay(image, m, alpha=0.0).tolist() == image.tolist()
    hot = overlay(image, m, alpha=1.0)
    jet_top = colormaps['jet'](1.0, bytes=True)[2::-1]  # BGR of the highest value
    assert hot[3, 4].tolist() == list(jet_top)
    assert colorize(m)[0, 0].tolist() == list(colormaps['jet'](0.0, bytes=True)[2::-1])
    with pytest.raises(ValueError, match='image resolution'):
        overlay(image, torch.zeros(10, 30))
    # Log scale: 1/100 of the maximum is 2 of 3 decades down, a third of the colour range.
    spread = torch.full((20, 30), 1e-2)
    spread[3, 4] = 1
    assert _jet_index(colorize(spread))[0, 0] == 0  # linear: the floor is the lowest colour
    assert abs(int(_jet_index(colorize(spread, scale='log'))[0, 0]) - 85) <= 1
    with pytest.raises(ValueError, match='scale'):
        colorize(spread, scale='sqrt')


def test_output_names_resolve_clashing_stems():
    names = tool.output_names([Path('x/a.png'), Path('x/a.jpg'), Path('x/b.png')])
    assert names == ['a_png', 'a_jpg', 'b']


# ---------------------------------------------------------------------------------------
# Tool


def _write(tmp_path, cfg, name='cfg.py'):
    path = tmp_path / name
    cfg.dump(str(path))
    return str(path)


def test_tool_vtfpn_random_weights_writes_documented_files(tmp_path, capsys):
    cfg = _model_cfg(
        # Would fail (file missing) if the tool did not switch pretrained weights off.
        init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'absent.pth')))
    images = tmp_path / 'images'
    images.mkdir()
    shapes = {'wide': (60, 100), 'tall': (90, 50)}
    for stem, (h, w) in shapes.items():
        mmcv.imwrite(_image(h, w), str(images / f'{stem}.png'))
    (images / 'notes.txt').write_text('not an image')
    out = tmp_path / 'out'
    assert tool.main([_write(tmp_path, cfg), str(images), '--out-dir', str(out),
                      '--save-npy', '--tile-size', '64']) == 0
    captured = capsys.readouterr()
    assert 'RANDOM weights' in captured.err
    assert 'ln(hw)' in captured.out and 'level3' in captured.out

    assert sorted(p.name for p in out.iterdir()) == ['entropy.json', 'tall', 'wide']
    per_level = ([f'token{k}.png' for k in range(NUM_TOKENS)] + ['grid.png']
                 + [f'mixed_token{k}.png' for k in range(NUM_TOKENS)] + ['mixed_grid.png']
                 + ['attn.npy', 'mixing.npy', 'mixed.npy'])
    expected = sorted(f'level{i}_{f}' for i in range(4) for f in per_level)
    summary = json.loads((out / 'entropy.json').read_text())
    for stem, (h, w) in shapes.items():
        folder = out / stem
        assert sorted(p.name for p in folder.iterdir()) == expected
        for png in folder.glob('*token*.png'):
            assert mmcv.imread(str(png)).shape == (h, w, 3), png
        for png in folder.glob('*grid.png'):
            # 1 x 2 tiles of longer side 64; the width grows with the title if needed.
            gh, gw, _ = mmcv.imread(str(png)).shape
            min_h, min_w = grid_size((h, w), NUM_TOKENS, 64)
            assert gh == min_h and gw >= min_w, png
        raw = np.load(folder / 'level0_attn.npy')
        assert raw.shape[0] == NUM_TOKENS and raw.dtype == np.float32
        np.testing.assert_allclose(raw.sum((1, 2)), 1, rtol=1e-5)
        assert np.load(folder / 'level0_mixing.npy').shape == (NUM_TOKENS, 4 * NUM_TOKENS)
        assert np.load(folder / 'level2_mixed.npy').shape == (NUM_TOKENS, h, w)
        rows = summary[str(images / f'{stem}.png')]['levels']
        assert [r['level'] for r in rows] == ['level0', 'level1', 'level2', 'level3']
        for r in rows:
            assert r['uniform'] == pytest.approx(math.log(r['map'][0] * r['map'][1]))
            assert 0 < r['entropy'] <= r['uniform'] + 1e-9


def test_tool_rejects_model_without_vt_modules(tmp_path, capsys):
    image = tmp_path / 'a.png'
    mmcv.imwrite(_image(40, 40), str(image))
    assert tool.main([_write(tmp_path, _model_cfg(neck='FPN')), str(image),
                      '--out-dir', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'no visual-token modules' in err and 'neck=FPN' in err
    assert not (tmp_path / 'out').exists()


def test_tool_rejects_missing_inputs(tmp_path, capsys):
    cfg = _write(tmp_path, _model_cfg())
    assert tool.main([cfg, str(tmp_path / 'nope.png'), '--out-dir', str(tmp_path)]) == 2
    assert re.search('error: IMAGE_OR_FOLDER .* does not exist', capsys.readouterr().err)
    image = tmp_path / 'a.png'
    mmcv.imwrite(_image(40, 40), str(image))
    assert tool.main([cfg, str(tmp_path / 'nope.pth'), str(image),
                      '--out-dir', str(tmp_path)]) == 2
    assert re.search('error: argument CHECKPOINT: .* does not exist', capsys.readouterr().err)


def _jet_index(picture):
    """Per pixel, the index (0..255) of the nearest 'jet' colour: the map value drawn."""
    lut = colormaps['jet'](np.linspace(0, 1, 256), bytes=True)[:, 2::-1].astype(np.int32)
    dist = ((picture[:, :, None, :].astype(np.int32) - lut) ** 2).sum(-1)
    return dist.argmin(-1)


def test_tool_checkpoint_overlay_peaks_where_the_token_looks(tmp_path, capsys):
    """Alignment: tokens made to follow brightness peak on the image's corner squares."""
    k = 10.0
    cfg = _model_cfg(backbone=dict(type='_AttnTestPyramid'))
    model = _build(cfg)
    with torch.no_grad():
        for lateral, tokenizer in zip(model.neck.lateral_convs, model.neck.tokenizers):
            lateral.conv.weight.zero_()
            lateral.conv.weight[0, :, 0, 0] = 1 / 3  # channel 0 = brightness
            lateral.conv.bias.zero_()
            tokenizer.token_filters.zero_()
            tokenizer.token_filters[0, 0] = k   # token 0 looks at bright pixels
            tokenizer.token_filters[1, 0] = -k  # token 1 looks at dark pixels
    ckpt = tmp_path / 'bright.pth'
    save_checkpoint(dict(meta=dict(dataset_meta=dict(classes=('a', 'b', 'c'),
                                                     palette=[[0, 0, 0]] * 3)),
                         state_dict=model.state_dict()), str(ckpt))

    # Off-centre content on a non-square image; resized 100x150 -> 80x120, padded to
    # 96x128 at the bottom and on the right.
    image = np.full((100, 150, 3), 128, np.uint8)
    image[:25, :25] = 255   # bright square, top-left
    image[75:, 112:] = 0    # dark square, bottom-right (next to the padding)
    path = tmp_path / 'corners.png'
    mmcv.imwrite(image, str(path))
    out = tmp_path / 'out'
    assert tool.main([_write(tmp_path, cfg), str(ckpt), str(path), '--out-dir', str(out),
                      '--alpha', '1', '--save-npy']) == 0
    assert 'RANDOM' not in capsys.readouterr().err

    for level in range(4):
        for token, (rows, cols) in enumerate([(slice(0, 25), slice(0, 25)),
                                              (slice(75, 100), slice(112, 150))]):
            drawn = _jet_index(mmcv.imread(str(out / 'corners' /
                                               f'level{level}_token{token}.png')))
            assert drawn.shape == (100, 150)
            inside = np.zeros_like(drawn, dtype=bool)
            inside[rows, cols] = True
            peak = drawn == drawn.max()
            assert drawn.max() == 255 and peak[inside].any() and not peak[~inside].any(), (
                f'level{level} token{token}: peak at {np.argwhere(peak)[:3].tolist()}')
        raw = np.load(out / 'corners' / f'level{level}_attn.npy')
        assert np.unravel_index(raw[0].argmax(), raw[0].shape) == (0, 0)
