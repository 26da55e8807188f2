"""Deployment: the inference optimisation step."""
from .optimize import fold_conv_bn, optimize_for_inference

__all__ = ['optimize_for_inference', 'fold_conv_bn']
