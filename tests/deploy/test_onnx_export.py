"""ONNX export of the demo and paper segmentors, checked against PyTorch in ONNX Runtime."""
import cv2
import pytest
import torch
from deploy_helpers import DEMO, ROOT, TINY, TINY_FPN, run_tool, write_checkpoint

pytest.importorskip('onnxruntime')

from vtseg.datasets.vtdemo_scenes import CLASSES, PALETTE  # noqa: E402
from vtseg.deploy import (  # noqa: E402
    DeployError,
    OnnxSegmentor,
    export_onnx,
    export_segmentor,
    ort_session,
    relative_error,
)
from vtseg.deploy.from_config import load_segmentor  # noqa: E402
from vtseg.deploy.verify import pytorch_prediction  # noqa: E402

#: Three image sizes: the demo's, a non-square one and an odd one (no multiple of 32).
SIZES = [(96, 96), (64, 128), (123, 77)]


def data_options(root):
    return {f'{split}_dataloader.dataset.data_root': str(root)
            for split in ('train', 'val', 'test')}


@pytest.fixture(scope='module', params=sorted(DEMO))
def demo_export(request, demo_data, tmp_path_factory):
    """A fresh-initialised demo model (full 96x96 config), exported with dynamic shapes."""
    tmp = tmp_path_factory.mktemp(f'export_{request.param}')
    config = DEMO[request.param]
    ckpt = write_checkpoint(config, tmp / 'model.pth')
    result = export_segmentor(str(ROOT / config), ckpt, str(tmp / 'model.onnx'),
                              dynamic=True, cfg_options=data_options(demo_data), log=print)
    model, cfg = load_segmentor(str(ROOT / config), ckpt, data_options(demo_data))
    return request.param, result, model, cfg, tmp


@pytest.mark.slow
def test_demo_export_is_dynamic_and_matches_pytorch_at_three_sizes(demo_export, demo_data):
    name, result, model, cfg, tmp = demo_export
    print(result.summary())
    ver = result.verification
    assert ver is not None and not ver.synthetic  # checked on the first val image
    assert ver.image.endswith('000000.png') and ver.rel <= 1e-4
    seg = OnnxSegmentor(result.path)
    assert seg.input_hw == [None, None]  # dynamic height and width
    src = cv2.imread(str(demo_data / 'img_dir' / 'val' / '000001.png'))
    for h, w in SIZES:
        path = str(tmp / f'img_{h}x{w}.png')
        cv2.imwrite(path, cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR))
        ref_logits, ref_labels = pytorch_prediction(model, cfg, path)
        pred = seg.predict(path)
        assert pred.logits.shape == ref_logits.shape == (len(CLASSES), h, w)
        rel = relative_error(pred.logits, ref_logits)
        print(f'{name} {h}x{w}: max relative error {rel:.2e}, labels agree '
              f'{(pred.labels == ref_labels).mean():.6f}')
        assert rel <= 1e-4, (name, h, w, rel)
        assert (pred.labels == ref_labels).mean() > 0.999


@pytest.mark.slow
def test_metadata_carries_preprocessing_classes_and_palette(demo_export):
    _, result, model, _, _ = demo_export
    spec = OnnxSegmentor(result.path).spec
    assert spec.classes == list(CLASSES) and spec.palette == PALETTE
    assert spec.mean == [123.675, 116.28, 103.53] and spec.std == [58.395, 57.12, 57.375]
    assert spec.channel_flip and spec.input_channel_order == 'bgr'
    assert spec.resize is None and spec.size_divisor is None and spec.dynamic
    assert spec.num_classes == len(CLASSES) and spec.mode == 'logits'
    assert spec.source['config'].endswith('_vtdemo.py') and spec.source['checkpoint_sha256']


def test_neck_and_head_output_export_for_benchmarks(tmp_path):
    """export_onnx on a plain module (the neck, inputs: its feature maps) and on a segmentor
    in mode='tensor' (normalised input, head output), at a second size of a dynamic graph."""
    model, _ = load_segmentor(str(ROOT / DEMO['vtfpn']), None, TINY)
    feats = [torch.randn(1, c, 96 // s, 96 // s) for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32])]
    path = export_onnx(model.neck, str(tmp_path / 'neck.onnx'), inputs=feats, dynamic=True)
    sess = ort_session(path, threads=1)
    assert [i.name for i in sess.get_inputs()] == ['input_0', 'input_1', 'input_2', 'input_3']
    feats = [torch.randn(2, c, 80 // s, 112 // s) for c, s in
             zip([8, 16, 32, 64], [4, 8, 16, 32])]
    outs = sess.run(None, {f'input_{i}': f.numpy() for i, f in enumerate(feats)})
    with torch.no_grad():
        refs = model.neck(feats)
    assert len(outs) == len(refs) == 4
    for out, ref in zip(outs, refs):
        assert relative_error(out, ref.numpy()) <= 1e-4
    path = export_onnx(model, str(tmp_path / 'tensor.onnx'), shape=(96, 96), dynamic=True,
                       mode='tensor')
    x = torch.randn(1, 3, 64, 160)
    out = ort_session(path).run(None, {'image': x.numpy()})[0]
    with torch.no_grad():
        ref = model(x, mode='tensor')
    assert out.shape == tuple(ref.shape) == (1, len(CLASSES), 16, 40)
    assert relative_error(out, ref.numpy()) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize('config, options', [
    ('configs/vtfpn_r50_lip.py', {}),
    # The paper's test resize (short side 800) at a tenth of the size: same model, less time.
    ('configs/vtfpn_r50_coco-stuff164k.py',
     {'test_dataloader.dataset.pipeline.1.scale': 80,
      'test_dataloader.dataset.pipeline.1.max_size': 133}),
])
def test_paper_vtfpn_configs_export(config, options, tmp_path):
    """R-50 VT-FPN (LIP 473x473 resize; COCO-Stuff shortest-edge resize, 171 classes) with
    random weights (no pretrained init, nothing downloaded)."""
    torch.manual_seed(0)
    result = export_segmentor(str(ROOT / config), None, str(tmp_path / 'm.onnx'),
                              shape=(64, 64), dynamic=True, cfg_options=options)
    print(result.summary())
    ver = result.verification
    assert ver.synthetic and ver.rel <= 1e-4
    spec = result.spec
    if 'lip' in config:
        assert spec.num_classes == 20 and spec.resize == dict(type='Resize', scale=[473, 473],
                                                              keep_ratio=False)
        assert ver.shape == (64, 64)  # mmseg resizes the prediction back to the image
    else:
        assert spec.num_classes == 171 and spec.resize['type'] == 'ResizeShortestEdge'
        assert not spec.channel_flip and spec.std == [1.0, 1.0, 1.0]  # caffe-style input


# ------------------------------------------------------------------------- bad input
def test_checkpoint_of_another_model_is_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(DeployError, match='does not fit the config'):
        export_segmentor(str(ROOT / DEMO['vtfpn']), tiny_checkpoint, str(tmp_path / 'x.onnx'))
    out = run_tool('tools/export_onnx.py', DEMO['fpn'], tiny_checkpoint, '--out',
                   tmp_path / 'x.onnx', expect_rc=2)
    errors = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'does not fit the config' in errors[0], out
    assert not (tmp_path / 'x.onnx').exists()


@pytest.mark.parametrize('options, message', [
    ({'model.test_cfg.mode': 'slide'}, "test_cfg.mode='slide' is not supported"),
    ({'model.type': 'CascadeEncoderDecoder'}, "'CascadeEncoderDecoder' is not supported"),
    ({'test_dataloader.dataset.pipeline.1.type': 'RandomFlip'}, 'RandomFlip'),
])
def test_unsupported_models_are_refused(options, message, tiny_checkpoint, tmp_path):
    with pytest.raises(DeployError, match=message):
        export_segmentor(str(ROOT / DEMO['vtfpn']), tiny_checkpoint, str(tmp_path / 'x.onnx'),
                         cfg_options={**TINY, **options})


def test_shapes_the_model_cannot_take_are_refused(tmp_path):
    # FPN upsampling by a fixed factor of 2 needs sizes divisible by 32.
    opts = {**TINY_FPN, 'model.neck.upsample_cfg': dict(scale_factor=2, mode='nearest')}
    ckpt = write_checkpoint(DEMO['fpn'], tmp_path / 'fpn.pth', opts)
    config = str(ROOT / DEMO['fpn'])
    with pytest.raises(DeployError, match='divisible by its output stride'):
        export_segmentor(config, ckpt, str(tmp_path / 'x.onnx'), shape=(100, 100),
                         cfg_options=opts)
    # A fixed size the padding can never give.
    opts['model.data_preprocessor.test_cfg'] = dict(size_divisor=32)
    with pytest.raises(DeployError, match='not divisible by .*size_divisor 32.*--shape 128 128'):
        export_segmentor(config, ckpt, str(tmp_path / 'x.onnx'), shape=(100, 100),
                         cfg_options=opts)
    assert not (tmp_path / 'x.onnx').exists()


def test_labels_output_with_a_resizing_pipeline_is_refused(tiny_checkpoint, tmp_path):
    resize = {'test_dataloader.dataset.pipeline.1.type': 'Resize',
              'test_dataloader.dataset.pipeline.1.scale': (64, 64),
              'test_dataloader.dataset.pipeline.1.keep_ratio': False}
    with pytest.raises(DeployError, match='export --output logits'):
        export_segmentor(str(ROOT / DEMO['vtfpn']), tiny_checkpoint, str(tmp_path / 'x.onnx'),
                         mode='labels', cfg_options={**TINY, **resize})
