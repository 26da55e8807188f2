"""``import vtseg`` registers vtseg's classes in mmseg's registries."""
import inspect

from mmengine.config import Config
from mmseg.registry import MODELS


def _registered_classes():
    import vtseg.models as models
    return [obj for obj in vars(models).values()
            if inspect.isclass(obj) and obj.__module__.startswith('vtseg.')]


def test_every_vtseg_model_is_in_mmseg_models():
    classes = _registered_classes()
    assert classes, 'vtseg.models exports no model class'
    for cls in classes:
        assert MODELS.get(cls.__name__) is cls, cls


def test_custom_imports_builds_vtfpn():
    cfg = Config(dict(
        custom_imports=dict(imports=['vtseg'], allow_failed_imports=False),
        neck=dict(type='VTFPN', in_channels=[4, 8], out_channels=8, num_outs=2,
                  num_tokens=2, token_channels=16, num_heads=2)))
    from mmengine.registry import init_default_scope
    init_default_scope('mmseg')
    # What mmengine does with custom_imports when a config file is loaded:
    from mmengine.utils import import_modules_from_strings
    import_modules_from_strings(**cfg.custom_imports)
    neck = MODELS.build(cfg.neck)
    assert type(neck).__name__ == 'VTFPN'
