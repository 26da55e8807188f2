"""vtseg: Visual Transformers (Wu et al., 2020) for semantic segmentation in MMSegmentation.

``import vtseg`` (or ``custom_imports = dict(imports=['vtseg'])`` in a config) registers
vtseg's models, datasets, hooks and checkpoint machinery in mmseg's and mmengine's
registries, and lets mmengine checkpoints load under torch >= 2.6 weights-only loading
(:mod:`vtseg.checkpoint.compat`, the only change made to another package).
"""
# checkpoint: weights-only compatibility, the checked loader, the checkpoint hooks.
# models (MODELS), datasets (DATASETS), engine: the CPU DDP wrapper, the bfloat16 optim
# wrapper, ClassIoUMetric, ModelCheckHook.
from . import checkpoint, datasets, engine, models
from .version import __version__

__all__ = ['__version__', 'checkpoint', 'datasets', 'engine', 'models']
