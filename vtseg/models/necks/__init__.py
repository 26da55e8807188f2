from .vt_fpn import VTFPN

__all__ = ['VTFPN']
