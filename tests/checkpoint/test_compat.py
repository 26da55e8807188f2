"""mmengine checkpoints load under torch's weights-only loading once vtseg is imported."""
import builtins
import pickle

import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch import nn
from torch.utils.data import Dataset

import vtseg  # noqa: F401  (applies the patch)
from vtseg.checkpoint import safe_checkpoint_globals


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=(out.squeeze(-1) - labels).square().mean())
        return out


class ToyData(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return dict(inputs=torch.tensor([float(i), 1.0]), labels=torch.tensor(float(i)))


def _runner(work_dir, max_iters, resume=False, load_from=None):
    return Runner(
        model=ToyModel(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=ToyData(), batch_size=2,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=1000),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        resume=resume, load_from=load_from, randomness=dict(seed=0),
        experiment_name=f'toy_{max_iters}_{resume}', default_scope='mmengine')


def test_runner_checkpoint_loads_weights_only_and_resumes(tmp_path):
    _runner(tmp_path, max_iters=2).train()
    ckpt = tmp_path / 'iter_2.pth'
    assert ckpt.exists()
    # What the file needs beyond torch's defaults is exactly what vtseg allow-lists: in
    # particular no builtins.getattr (mmengine pickles its statistics methods with it).
    saved = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()  # list what the file needs from scratch
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(str(ckpt))
    finally:
        torch.serialization.add_safe_globals(saved)
    assert 'builtins.getattr' not in needed
    allowed = {f'{g.__module__}.{g.__qualname__}' for g in safe_checkpoint_globals()}
    assert set(needed) <= allowed, set(needed) - allowed
    assert any('HistoryBuffer' in n for n in needed)  # the message hub really is in there

    state = torch.load(str(ckpt))  # torch's default: weights_only=True
    assert state['meta']['iter'] == 2
    loaded = state['message_hub']['log_scalars']['train/loss']
    assert isinstance(loaded, HistoryBuffer) and len(loaded.data[0]) == 2
    assert loaded.statistics('mean') == loaded.mean()  # default statistics restored

    load_checkpoint(ToyModel(), str(ckpt), map_location='cpu')  # mmengine's load_from path

    runner = _runner(tmp_path, max_iters=4, resume=True)
    runner.train()
    assert runner.iter == 4
    assert (tmp_path / 'iter_4.pth').exists()
    resumed = torch.load(str(tmp_path / 'iter_4.pth'))
    assert resumed['meta']['iter'] == 4


def test_weights_only_stays_on():
    # vtseg allow-lists classes; it does not switch the safety off.
    assert builtins.getattr not in safe_checkpoint_globals()

    class Evil:
        def __reduce__(self):
            return (print, ('pwned',))

    path = '/tmp/_vtseg_evil.pth'
    torch.save({'x': Evil()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)


def test_custom_statistics_still_pickle():
    buf = HistoryBuffer()
    buf.update(1.0)
    clone = pickle.loads(pickle.dumps(buf))
    assert clone.statistics('max') == 1.0
    assert 'statistics_methods' not in buf.__getstate__()
