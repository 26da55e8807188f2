"""vtseg models; importing this module registers them in ``mmseg.registry.MODELS``."""
from . import layers
from .necks import VTFPN

__all__ = ['layers', 'VTFPN']
