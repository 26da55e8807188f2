"""Build an mmseg model from a config file for analysis (FLOPs, parameters, shapes).

Analysis never needs trained or pretrained weights, and nothing may be downloaded, so
pretrained ``init_cfg`` entries are switched off; SyncBN becomes BN so that the model runs
in one process on any device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS
from torch import nn

from ..cli.cfg_options import merge_cfg_options, read_config

__all__ = ['load_config', 'disable_pretrained', 'build_model_from_config', 'DictAction']


def load_config(config: Union[str, Path, Config],
                cfg_options: Optional[Dict[str, Any]] = None) -> Config:
    """Read a config file (its ``custom_imports`` are imported) and merge overrides.

    Args:
        config: path of an mmengine config file, or a loaded :class:`Config`.
        cfg_options: ``--cfg-options`` style overrides, e.g. ``{'model.neck.num_outs': 5}``.
    """
    if isinstance(config, Config):
        cfg = config.copy()
    else:
        path = Path(config)
        if not path.is_file():
            raise FileNotFoundError(f'config file {str(path)!r} does not exist; pass the path '
                                    'of a config, e.g. configs/fpn_r50_lip.py')
        cfg = read_config(str(path))
    merge_cfg_options(cfg, cfg_options)  # a mistyped key is an error, not a new key
    if 'model' not in cfg:
        raise KeyError(f'config {getattr(cfg, "filename", config)!r} defines no `model`')
    return cfg


def _is_pretrained(init_cfg: Any) -> bool:
    items = init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]
    return any(isinstance(i, dict) and i.get('type') == 'Pretrained' for i in items)


def disable_pretrained(model_cfg: Dict[str, Any], prefix: str = 'model') -> List[str]:
    """Switch off every pretrained-weight reference in a model config, in place.

    Sets ``pretrained`` keys and ``init_cfg`` entries of type ``Pretrained`` to ``None``
    at any depth (backbone, neck, heads).

    Returns:
        The dotted keys that were switched off, e.g. ``['model.backbone.init_cfg']``.
    """
    changed: List[str] = []
    for key, value in list(model_cfg.items()):
        name = f'{prefix}.{key}'
        if key == 'pretrained' and value is not None:
            model_cfg[key] = None
            changed.append(name)
        elif key == 'init_cfg' and _is_pretrained(value):
            model_cfg[key] = None
            changed.append(name)
        elif isinstance(value, dict):
            changed += disable_pretrained(value, name)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    changed += disable_pretrained(item, f'{name}.{i}')
    return changed


def build_model_from_config(config: Union[str, Path, Config],
                            cfg_options: Optional[Dict[str, Any]] = None,
                            *, part: Optional[str] = None,
                            device: str = 'cpu') -> Tuple[nn.Module, Config, List[str]]:
    """Build ``cfg.model`` without pretrained weights, SyncBN reverted to BN, in eval mode.

    The one place tools and tests build a model for analysis (FLOPs, benchmarks,
    attention maps of untrained models).

    Args:
        config: config path or loaded config.
        cfg_options: overrides merged before building.
        part: build only this part of the model, e.g. ``'neck'`` or ``'backbone'``.
        device: where to put the model.

    Returns:
        ``(model, cfg, switched_off)`` where ``switched_off`` lists the pretrained entries
        that were disabled (nothing is downloaded).
    """
    cfg = load_config(config, cfg_options)
    switched_off = disable_pretrained(cfg.model)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    if part is not None and not isinstance(cfg.model.get(part), dict):
        raise KeyError(f'config {getattr(cfg, "filename", config)!r} has no model.{part}')
    model = MODELS.build(cfg.model if part is None else cfg.model[part])
    model = revert_sync_batchnorm(model).to(device)
    model.eval()  # (mmseg's ResNet.train returns None: no chaining)
    return model, cfg, switched_off
