"""mmseg's inference APIs load vtseg configs and checkpoints on the CPU."""
import numpy as np
import pytest
import torch
from helpers import tiny_options
from mmseg.apis import MMSegInferencer, inference_model, init_model

from vtseg.datasets.demo import generate_demo_data
from vtseg.datasets.vtdemo_scenes import CLASSES
from vtseg.engine import build_runner, load_config, prepare_train_cfg

VTFPN = 'configs/demo/vtfpn_r18_vtdemo.py'


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A checkpoint written by the training loop (2 iterations of a tiny VT-FPN)."""
    root = tmp_path_factory.mktemp('infer')
    generate_demo_data(root / 'data', num_train=4, num_val=2, seed=0, size=48, verbose=False)
    options = tiny_options(root / 'data', iters=2, ckpt_interval=2)
    options['train_cfg.val_interval'] = 100  # no validation needed here
    runner = build_runner(prepare_train_cfg(VTFPN, work_dir=str(root / 'work'),
                                            cfg_options=options))
    runner.train()
    # What a user passes to the inference APIs: the config with the same model settings.
    cfg = load_config(VTFPN, {k: v for k, v in options.items() if k.startswith('model.')})
    image = str(root / 'data' / 'img_dir' / 'val' / '000000.png')
    return cfg, str(root / 'work' / 'iter_2.pth'), image


@pytest.mark.slow
def test_init_model_and_inference_model(trained):
    cfg, checkpoint, image = trained
    model = init_model(cfg, checkpoint, device='cpu')
    assert model.dataset_meta['classes'] == CLASSES
    state = torch.load(checkpoint, map_location='cpu')['state_dict']
    key = 'neck.tokenizers.0.token_filters'
    assert torch.equal(model.state_dict()[key], state[key])  # trained weights, not init
    result = inference_model(model, image)
    pred = result.pred_sem_seg.data
    assert pred.shape == (1, 48, 48)
    assert set(pred.unique().tolist()) <= set(range(len(CLASSES)))


@pytest.mark.slow
def test_mmseg_inferencer(trained, tmp_path):
    cfg, checkpoint, image = trained
    inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device='cpu')
    out = inferencer(image, out_dir=str(tmp_path), return_datasamples=True)
    assert out.pred_sem_seg.data.shape == (1, 48, 48)
    # The painted prediction is written with the demo palette.
    painted = list((tmp_path / 'vis').glob('*.png'))
    assert len(painted) == 1
    # Both APIs give the same map.
    ref = inference_model(init_model(cfg, checkpoint, device='cpu'), image)
    assert np.array_equal(out.pred_sem_seg.data.numpy(), ref.pred_sem_seg.data.numpy())
