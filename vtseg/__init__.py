"""vtseg: Visual Transformers (Wu et al., 2020) for semantic segmentation in MMSegmentation.

``import vtseg`` (or ``custom_imports = dict(imports=['vtseg'])`` in a config) registers
vtseg's models and datasets in mmseg's registries and lets mmengine checkpoints load under
torch >= 2.6 weights-only loading (see :mod:`vtseg.utils.torch_compat`).
"""
from .utils.torch_compat import patch_checkpoint_loading
from .version import __version__

patch_checkpoint_loading()

# Registers models (MODELS), datasets (DATASETS), the CPU DDP wrapper, the bfloat16 optim
# wrapper and ClassIoUMetric.
from . import datasets, engine, models  # noqa: E402

__all__ = ['__version__', 'datasets', 'engine', 'models']
