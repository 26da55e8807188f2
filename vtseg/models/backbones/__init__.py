from .vt_resnet import VT_ARCH_SETTINGS, VTResNet, VTResNetClassifier

__all__ = ['VTResNet', 'VTResNetClassifier', 'VT_ARCH_SETTINGS']
