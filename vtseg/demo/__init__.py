"""The CPU demo application: FPN vs VT-FPN trained and compared on the synthetic VTDemo set
(``tools/demo.py``, ``make demo``). See :mod:`vtseg.demo.fpn_vs_vtfpn`."""
from .fpn_vs_vtfpn import DEMO_MODELS, DemoModel, find_source_tree, run_demo

__all__ = ['DEMO_MODELS', 'DemoModel', 'find_source_tree', 'run_demo']
