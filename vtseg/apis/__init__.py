"""Inference with the checkpoint checks of vtseg's Runner: :func:`init_model` and
:class:`VTSegInferencer` (mmseg's ``init_model`` / ``MMSegInferencer`` arguments).

Not imported by ``import vtseg`` (it imports mmseg's inference stack).
"""
from .inference import VTSegInferencer, check_weights, init_model, load_policy, load_weights

__all__ = ['VTSegInferencer', 'check_weights', 'init_model', 'load_policy', 'load_weights']
