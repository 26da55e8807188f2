"""mmseg's inference APIs with the checkpoint checks of vtseg's Runner.

mmseg's ``init_model`` and ``MMSegInferencer`` load with ``strict=False``: a checkpoint of
another model (an FPN checkpoint for a VT-FPN config) leaves the tensors it lacks at their
random initial values, with one log line, and the predictions look plausible. They offer no
hook that sees both the model and the checkpoint, so vtseg does not change them; it offers
the same calls with the checks of the Runner's
:class:`~vtseg.checkpoint.hooks.CheckpointReportHook`:

* :func:`init_model`: mmseg's arguments (``device`` defaults to ``'cpu'``), plus
  ``allow_missing`` / ``allow_shape_mismatch``;
* :class:`VTSegInferencer`: ``MMSegInferencer`` with the same two arguments.

Both refuse a checkpoint that leaves model tensors unset or of another shape, listing them
(:meth:`~vtseg.checkpoint.state_dict.StateDictReport.check`), unless a partial load is asked
for explicitly: by the arguments, or by the config's
``default_hooks.checkpoint_report.allow_missing`` / ``allow_shape_mismatch`` (the setting
the Runner reads too). A truncated, random or unsafe file gives a
:class:`~vtseg.checkpoint.io.CheckpointError` naming it.

Both also apply the host-memory setting the config declares
(:class:`~vtseg.engine.host_memory.HostMemoryHook` in ``custom_hooks``), as a Runner
would, so inference reuses freed host memory like training and testing do.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

from mmengine.config import Config
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from mmseg.apis import MMSegInferencer
from mmseg.apis import init_model as mmseg_init_model
from torch import nn

from ..checkpoint.io import load_checkpoint
from ..checkpoint.state_dict import compare_state_dicts
from ..engine.host_memory import declared_host_memory, reuse_host_memory

__all__ = ['VTSegInferencer', 'check_weights', 'init_model', 'load_policy', 'load_weights']

_HOW_TO_ALLOW = (
    'to load it anyway (the tensors listed keep their initial values), pass '
    'allow_missing=True and/or allow_shape_mismatch=True, or set '
    'default_hooks.checkpoint_report.allow_missing=True in the config '
    '(the tools: --cfg-options default_hooks.checkpoint_report.allow_missing=True)')


def load_policy(cfg: Optional[Config], allow_missing: Optional[bool] = None,
                allow_shape_mismatch: Optional[bool] = None) -> Tuple[bool, bool]:
    """``(allow_missing, allow_shape_mismatch)``: the arguments where given, else the
    config's ``default_hooks.checkpoint_report`` settings, else ``False``."""
    report = ((cfg.get('default_hooks') or {}).get('checkpoint_report') or {}) \
        if cfg is not None else {}
    if allow_missing is None:
        allow_missing = bool(report.get('allow_missing', False))
    if allow_shape_mismatch is None:
        allow_shape_mismatch = bool(report.get('allow_shape_mismatch', False))
    return allow_missing, allow_shape_mismatch


def check_weights(model: nn.Module, checkpoint: Dict[str, Any], source: str, *,
                  allow_missing: bool = False, allow_shape_mismatch: bool = False) -> None:
    """Raise ``CheckpointMismatchError`` if ``checkpoint`` does not fit ``model``."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    compare_state_dicts(model, state_dict).check(
        f'Checkpoint {source}', allow_missing=allow_missing,
        allow_shape_mismatch=allow_shape_mismatch, how_to_allow=_HOW_TO_ALLOW)


def _set_dataset_meta(model: nn.Module, checkpoint: Dict[str, Any]) -> None:
    """Class names and palette from the checkpoint's meta, as mmseg's init_model sets them
    (without them: the first mmseg dataset with the model's number of classes)."""
    from mmseg.utils import dataset_aliases, get_classes, get_palette

    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    if 'dataset_meta' in meta:
        model.dataset_meta = meta['dataset_meta']
        return
    if 'CLASSES' in meta:
        model.dataset_meta = {'classes': meta['CLASSES'], 'palette': meta['PALETTE']}
        return
    num_classes = getattr(getattr(model, 'decode_head', None), 'num_classes', None)
    name = next((n for n in dataset_aliases if len(get_classes(n)) == num_classes),
                'cityscapes')
    warnings.warn(f"no class names in the checkpoint's meta data: using those of {name}",
                  stacklevel=3)
    model.dataset_meta = {'classes': get_classes(name), 'palette': get_palette(name)}


def load_weights(model: nn.Module, filename: str, *, allow_missing: bool = False,
                 allow_shape_mismatch: bool = False) -> Dict[str, Any]:
    """Read ``filename``, refuse it if it does not fit ``model``, then load it.

    Returns:
        The checkpoint (as mmengine's ``load_checkpoint``).
    """
    checkpoint = load_checkpoint(filename, map_location='cpu')
    if not isinstance(checkpoint, dict):
        raise ValueError(f'Checkpoint {filename!r} holds a {type(checkpoint).__name__}, not '
                         'a dict of tensors')
    check_weights(model, checkpoint, filename, allow_missing=allow_missing,
                  allow_shape_mismatch=allow_shape_mismatch)
    return _load_checkpoint_to_model(model, checkpoint)


def init_model(config: Union[str, Path, Config], checkpoint: Optional[str] = None,
               device: str = 'cpu', cfg_options: Optional[dict] = None, *,
               allow_missing: Optional[bool] = None,
               allow_shape_mismatch: Optional[bool] = None) -> nn.Module:
    """mmseg's ``init_model`` that refuses a checkpoint which does not fit the model.

    Args:
        config, checkpoint, device, cfg_options: as for ``mmseg.apis.init_model``.
        allow_missing, allow_shape_mismatch: load anyway when model tensors are missing
            from the checkpoint / have another shape (``None``: the config's
            ``default_hooks.checkpoint_report`` settings, default ``False``).
    """
    if isinstance(config, (str, Path)):
        if not Path(config).is_file():
            raise FileNotFoundError(f'config file {str(config)!r} does not exist')
        config = Config.fromfile(str(config))
    if cfg_options is not None:
        config.merge_from_dict(cfg_options)
    allow_missing, allow_shape_mismatch = load_policy(config, allow_missing,
                                                      allow_shape_mismatch)
    _apply_host_memory(config)
    model = mmseg_init_model(config, None, device='cpu')
    if checkpoint is not None:
        ckpt = load_weights(model, str(checkpoint), allow_missing=allow_missing,
                            allow_shape_mismatch=allow_shape_mismatch)
        _set_dataset_meta(model, ckpt)
    return model.to(device).eval()


def _apply_host_memory(cfg: Config) -> None:
    """What the config's ``HostMemoryHook`` would do when a Runner starts."""
    reuse = declared_host_memory(cfg)
    if reuse is not None:
        reuse_host_memory(reuse)


class VTSegInferencer(MMSegInferencer):
    """``MMSegInferencer`` that refuses weights which do not fit the model.

    Args:
        allow_missing, allow_shape_mismatch: as for :func:`init_model`.
        *args, **kwargs: of ``MMSegInferencer`` (``model``, ``weights``, ``device``, ...).
    """

    def __init__(self, *args, allow_missing: Optional[bool] = None,
                 allow_shape_mismatch: Optional[bool] = None, **kwargs) -> None:
        self._allow = (allow_missing, allow_shape_mismatch)
        self._weights_name = str(kwargs.get('weights', args[1] if len(args) > 1 else None))
        super().__init__(*args, **kwargs)

    def _load_weights_to_model(self, model: nn.Module, checkpoint: Optional[dict],
                               cfg: Optional[Config]) -> None:
        if cfg is not None:
            _apply_host_memory(cfg)
        if checkpoint is not None:
            allow_missing, allow_shape_mismatch = load_policy(cfg, *self._allow)
            check_weights(model, checkpoint, self._weights_name, allow_missing=allow_missing,
                          allow_shape_mismatch=allow_shape_mismatch)
        super()._load_weights_to_model(model, checkpoint, cfg)
