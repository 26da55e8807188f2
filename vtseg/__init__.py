"""vtseg: Visual Transformers (Wu et al., 2020) for semantic segmentation in MMSegmentation.

``import vtseg`` (or ``custom_imports = dict(imports=['vtseg'])`` in a config) registers
vtseg's models, datasets, hooks and checkpoint machinery in mmseg's and mmengine's
registries, and lets mmengine checkpoints load under torch >= 2.6 weights-only loading
(:mod:`vtseg.checkpoint.compat`, the only change made to another package).
"""
from .version import __version__

# First: weights-only compatibility, the checked loader, the checkpoint hooks.
from . import checkpoint  # noqa: E402,I001
# Models (MODELS), datasets (DATASETS), the CPU DDP wrapper, the bfloat16 optim wrapper,
# ClassIoUMetric.
from . import datasets, engine, models  # noqa: E402

__all__ = ['__version__', 'checkpoint', 'datasets', 'engine', 'models']
