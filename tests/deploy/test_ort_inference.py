"""ONNX Runtime inference: mmseg's mIoU from the .onnx file alone, and clear errors."""
import cv2
import numpy as np
import pytest
import torch
from deploy_helpers import DEMO, ROOT, TINY, as_cli, run_tool
from helpers import data_options

pytest.importorskip('onnxruntime')

from vtseg.deploy import (  # noqa: E402
    DeployError,
    OnnxSegmentor,
    export_onnx,
    export_segmentor,
    infer_images,
    ort_session,
)
from vtseg.deploy.from_config import load_segmentor  # noqa: E402


def train_options(data_root, iters):
    """--cfg-options for a short run of the full demo VT-FPN on the test's data."""
    opts = {
        'train_dataloader.batch_size': 4,
        'train_cfg.max_iters': iters, 'train_cfg.val_interval': 10 * iters,
        'default_hooks.checkpoint.interval': iters, 'default_hooks.logger.interval': 10,
        'param_scheduler.0.end': 1, 'param_scheduler.1.begin': 1,
        'param_scheduler.1.end': iters,
    }
    return {**opts, **data_options(data_root)}


def miou_of_maps(pred_dir, ann_dir, num_classes):
    """mIoU (%) of label-map PNGs with mmseg's IoUMetric arithmetic."""
    from mmseg.evaluation import IoUMetric

    totals = [torch.zeros(num_classes, dtype=torch.float64) for _ in range(4)]
    anns = sorted(ann_dir.glob('*.png'))
    for ann in anns:
        pred = cv2.imread(str(pred_dir / ann.name), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(ann), cv2.IMREAD_UNCHANGED)
        areas = IoUMetric.intersect_and_union(torch.from_numpy(pred.astype(np.int64)),
                                              torch.from_numpy(label.astype(np.int64)),
                                              num_classes, 255)
        totals = [t + a.double() for t, a in zip(totals, areas)]
    metrics = IoUMetric.total_area_to_metrics(*totals, ['mIoU'])
    return float(np.nanmean(np.asarray(metrics['IoU'])) * 100), len(anns)


@pytest.mark.slow
def test_onnx_runtime_miou_equals_tools_test(demo_data, tmp_path):
    """Train the demo VT-FPN for 20 iterations, evaluate it with tools/test.py, export it
    and segment the same val images (all 12 of the test's VTDemo set) from the .onnx file
    alone: same mIoU, same label maps. (tools/export_onnx.py and tools/infer_onnx.py run
    the functions called here; their command lines are tested below and in
    test_onnx_export.py.)"""
    from vtseg.engine import build_runner, prepare_train_cfg, read_test_metrics

    iters, config = 20, DEMO['vtfpn']
    options = train_options(demo_data, iters)
    build_runner(prepare_train_cfg(str(ROOT / config), work_dir=str(tmp_path / 'train'),
                                   cfg_options=options)).train()
    ckpt = tmp_path / 'train' / f'iter_{iters}.pth'
    run_tool('tools/test.py', config, ckpt, '--work-dir', tmp_path / 'test', '--out',
             tmp_path / 'test_pred', *as_cli(options))
    miou_test = read_test_metrics(str(tmp_path / 'test'))['mIoU']
    result = export_segmentor(str(ROOT / config), str(ckpt), str(tmp_path / 'vtfpn.onnx'),
                              dynamic=True, cfg_options=options)
    print(result.summary())
    assert result.verification.image.endswith('000000.png')
    report = infer_images(result.path, str(demo_data / 'img_dir' / 'val'),
                          str(tmp_path / 'ort'), threads=1)
    print(report.summary())
    assert len(report.images) == 12 and len(report.written['vis']) == 12
    ann = demo_data / 'ann_dir' / 'val'
    miou_ort, n = miou_of_maps(tmp_path / 'ort' / 'pred', ann, 6)
    miou_ref, _ = miou_of_maps(tmp_path / 'test_pred', ann, 6)
    print(f'mIoU on {n} val images: tools/test.py {miou_test:.2f}, its label maps '
          f'{miou_ref:.4f}, ONNX Runtime {miou_ort:.4f}')
    assert n == 12 and abs(miou_ort - miou_test) <= 0.1
    same = [np.mean(cv2.imread(str(p), 0) == cv2.imread(str(tmp_path / 'test_pred' / p.name), 0))
            for p in sorted((tmp_path / 'ort' / 'pred').glob('*.png'))]
    print(f'pixels with the same label as tools/test.py --out: {100 * np.mean(same):.4f}%')
    assert np.mean(same) > 0.999


def test_infer_tool_writes_label_maps_and_overlays(fixed_export, tmp_path):
    import re

    (tmp_path / 'in').mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path / 'in' / f'{i}.png'), np.full((96, 96, 3), 60 * i, np.uint8))
    out = run_tool('tools/infer_onnx.py', fixed_export, tmp_path / 'in', '--out-dir',
                   tmp_path / 'out', '--threads', '1')
    assert re.search(r'2 image\(s\): ONNX Runtime [\d.]+ ms per image \(median\)', out), out
    for sub in ('pred', 'vis'):
        assert sorted(p.name for p in (tmp_path / 'out' / sub).glob('*.png')) == \
            ['0.png', '1.png']
    labels = cv2.imread(str(tmp_path / 'out' / 'pred' / '0.png'), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (96, 96) and labels.max() < 6


@pytest.fixture(scope='module')
def fixed_export(tiny_checkpoint, tmp_path_factory):
    """The tiny demo VT-FPN exported for a fixed 96x96 input, verified on the config's first
    test image, or on a random one where the demo data has not been generated."""
    path = tmp_path_factory.mktemp('fixed') / 'tiny.onnx'
    result = export_segmentor(str(ROOT / DEMO['vtfpn']), tiny_checkpoint, str(path),
                              cfg_options=TINY)
    assert result.verification.ok
    return str(path)


def test_images_of_the_wrong_channel_count_or_size_are_refused(fixed_export):
    seg = OnnxSegmentor(fixed_export, threads=1)
    assert seg.input_hw == [96, 96]
    with pytest.raises(DeployError, match='4 channels but the model takes 3'):
        seg.predict(np.zeros((96, 96, 4), np.uint8))
    with pytest.raises(DeployError, match='fixed 96x96 input.*64x80.*--dynamic'):
        seg.predict(np.zeros((64, 80, 3), np.uint8))
    pred = seg.predict(np.zeros((96, 96, 3), np.uint8))
    assert pred.labels.shape == (96, 96) and pred.logits.shape == (6, 96, 96)


def test_labels_export_agrees_with_pytorch(tiny_checkpoint, tmp_path):
    result = export_segmentor(str(ROOT / DEMO['vtfpn']), tiny_checkpoint,
                              str(tmp_path / 'labels.onnx'), mode='labels', dynamic=True,
                              cfg_options=TINY)
    assert result.verification.ok
    seg = OnnxSegmentor(result.path)
    pred = seg.predict(np.full((50, 70, 3), 128, np.uint8))
    assert pred.logits is None and pred.labels.shape == (50, 70)
    key = 'session.force_spinning_stop'
    assert seg.session.get_session_options().get_session_config_entry(key) == '1'
    kept = OnnxSegmentor(result.path, spin_after_run=True).session.get_session_options()
    with pytest.raises(RuntimeError, match=key):
        kept.get_session_config_entry(key)


def test_files_onnx_runtime_rejects_are_reported(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node('NoSuchOp', ['x'], ['y'], domain='com.example')
    graph = helper.make_graph([node], 'g', [helper.make_tensor_value_info(
        'x', TensorProto.FLOAT, [1])], [helper.make_tensor_value_info('y', TensorProto.FLOAT,
                                                                      [1])])
    bad = tmp_path / 'bad.onnx'
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17),
                                                      helper.make_opsetid('com.example', 1)]),
              str(bad))
    with pytest.raises(DeployError, match=r"cannot load .*bad\.onnx.*Re-export"):
        ort_session(str(bad))
    with pytest.raises(DeployError, match='does not exist'):
        ort_session(str(tmp_path / 'missing.onnx'))
    img = tmp_path / 'img.png'
    cv2.imwrite(str(img), np.zeros((8, 8, 3), np.uint8))
    out = run_tool('tools/infer_onnx.py', bad, img, expect_rc=2)
    errors = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'bad.onnx' in errors[0], out


def test_models_without_vtseg_metadata_are_refused(tmp_path):
    model, _ = load_segmentor(str(ROOT / DEMO['vtfpn']), None, TINY)
    path = export_onnx(model, str(tmp_path / 'plain.onnx'), shape=(48, 48))
    with pytest.raises(DeployError, match='no vtseg metadata.*tools/export_onnx.py'):
        OnnxSegmentor(path)


def _matmul_onnx(path, n=512):
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor('w', TensorProto.FLOAT, [n, n],
                                np.random.default_rng(0).random(n * n, np.float32))
    graph = helper.make_graph(
        [helper.make_node('MatMul', ['x', 'w'], ['y'])], 'matmul',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [n, n])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)]),
              str(path))
    return str(path)


def test_threads_stop_spinning_when_a_run_returns(tmp_path):
    """Between runs the caller's own work gets the cores: ONNX Runtime's threads, which by
    default keep spinning after a run, use no CPU while the session is idle."""
    import resource
    import time

    path = _matmul_onnx(tmp_path / 'matmul.onnx')
    x = np.ones((512, 512), np.float32)

    def cpu_s():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    session = ort_session(path, threads=2)
    options = session.get_session_options()
    assert options.get_session_config_entry('session.force_spinning_stop') == '1'
    for _ in range(3):
        session.run(None, {'x': x})
    start = cpu_s()
    time.sleep(0.3)
    assert cpu_s() - start < 0.02  # ~0.04-0.07 CPU-s per 0.5 s with ONNX Runtime's default

    kept = ort_session(path, threads=2, spin_after_run=True).get_session_options()
    with pytest.raises(RuntimeError, match='force_spinning_stop'):  # ONNX Runtime's default
        kept.get_session_config_entry('session.force_spinning_stop')
