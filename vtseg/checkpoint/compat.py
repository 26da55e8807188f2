"""Let mmengine checkpoints load under torch >= 2.6 weights-only loading.

torch 2.6 made ``torch.load(weights_only=True)`` the default. mmengine 0.10.7 calls
``torch.load`` without the argument, and its checkpoints carry a ``message_hub`` with
``HistoryBuffer`` objects holding numpy arrays, so ``--resume``, ``load_from``,
``init_model`` and ``MMSegInferencer`` fail with ``UnpicklingError``.

Two changes, both narrow:

1. The handful of classes an mmengine checkpoint holds are allow-listed with
   :func:`torch.serialization.add_safe_globals` (numpy arrays, dtypes and scalars, and
   ``HistoryBuffer``). Weights-only loading stays on for every file.
2. ``HistoryBuffer.__getstate__`` stops pickling mmengine's four default statistics
   methods (min/max/current/mean). Pickled by reference they need ``builtins.getattr``,
   which must never be allow-listed: it would let any file call any attribute.
   ``HistoryBuffer.__setstate__`` registers those defaults again on load, so nothing is
   lost. Methods a user registered with ``HistoryBuffer.register_statistics`` are still
   saved; such a checkpoint then needs ``weights_only=False`` (trusted files only).

Checkpoints written by mmengine *without* vtseg imported contain ``getattr`` and cannot be
loaded weights-only; :func:`vtseg.checkpoint.io.load_checkpoint` explains the fix. This is
the only change vtseg makes to other packages when it is imported; everything else is
registered (hooks, a file backend, a checkpoint loader scheme, a weight initialiser).
"""
from __future__ import annotations

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

_DEFAULT_STATISTICS = ('min', 'max', 'current', 'mean')


def _numpy_globals() -> list:
    """Numpy objects that appear in pickled arrays and scalars (numpy 1.x and 2.x)."""
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    found = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    # numpy >= 1.25 pickles dtypes of arrays as instances of numpy.dtypes.*DType classes.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith('DType')]
    return found


def _history_buffer_getstate(self: HistoryBuffer) -> dict:
    """Pickle a HistoryBuffer without mmengine's default statistics methods."""
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    custom = {k: v for k, v in type(self)._statistics_methods.items()
              if k not in _DEFAULT_STATISTICS}
    if custom:
        state['statistics_methods'] = custom
    return state


def safe_checkpoint_globals() -> list:
    """Everything vtseg allow-lists for weights-only loading."""
    return _numpy_globals() + [HistoryBuffer]


def patch_checkpoint_loading() -> None:
    """Apply both changes described in the module docstring (safe to call twice)."""
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.serialization.add_safe_globals(safe_checkpoint_globals())
    HistoryBuffer.__getstate__ = _history_buffer_getstate
