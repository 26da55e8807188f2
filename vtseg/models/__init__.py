"""vtseg models; importing this module registers them in ``mmseg.registry.MODELS``."""
from . import layers
from .backbones import VTResNet, VTResNetClassifier
from .necks import VTFPN

__all__ = ['layers', 'VTFPN', 'VTResNet', 'VTResNetClassifier']
