"""Where VT-FPN's time goes: its stages timed in place, in one neck running as a whole.

Forward hooks read the clock before and after each lateral conv, each tokenizer, the
token transformer and each projector; they only observe, so the neck computes what it
computes without them. What no stage covers (reshapes, the concatenation and split of
the tokens, the extra output levels, Python) is ``other``: the round's total minus its
stages. The stages are found from the model itself: its ``lateral_convs`` (the modules
:class:`~.models.Laterals` times as the floor), the transformer and tokenizers its
``token_groups()`` names, and its :class:`~vtseg.models.layers.Projector` modules.

Hooks fire only where modules run one by one: the benchmark times the stages of the
optimised eager form (a compiled neck runs as one graph). On a GPU each hook waits for
the queued work, so there the stages add up to more than the neck's plain time.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

from ...models.layers import Projector
from .timing import CLOCKS, sync

__all__ = ['STAGES', 'stage_modules', 'stage_times']

#: The stages, in the order the neck runs them; ``other`` is what none of them covers.
STAGES = ('lateral convs', 'tokenizers', 'transformer', 'projectors', 'other')


def stage_modules(neck: nn.Module) -> Dict[str, List[nn.Module]]:
    """The modules of each stage but ``other``: a VT-FPN-like neck (``lateral_convs``,
    ``token_groups()``, :class:`~vtseg.models.layers.Projector` modules)."""
    if not hasattr(neck, 'lateral_convs') or not hasattr(neck, 'token_groups'):
        raise TypeError(f'{type(neck).__name__} has no lateral_convs and token_groups(): '
                        'stages are timed for VT-FPN necks only')
    groups = neck.token_groups()
    return {'lateral convs': list(neck.lateral_convs),
            'tokenizers': [tok for _, toks in groups for _, tok in toks],
            'transformer': [transformer for transformer, _ in groups],
            'projectors': [m for m in neck.modules() if isinstance(m, Projector)]}


def stage_times(neck: nn.Module, inputs, *, warmup: int, repeats: int, device: str = 'cpu',
                clock: str = 'wall') -> Dict[str, List[float]]:
    """Seconds each stage of :data:`STAGES` took in each of ``repeats`` runs of
    ``neck(inputs)`` (under ``torch.no_grad``), and the runs' ``total``."""
    now = CLOCKS[clock]
    spent = dict.fromkeys(STAGES[:-1], 0.0)
    started: Dict[int, float] = {}
    handles = []

    def before(module, args):
        sync(device)
        started[id(module)] = now()

    def after(stage):
        def hook(module, args, output):
            sync(device)
            spent[stage] += now() - started.pop(id(module))
        return hook

    for stage, modules in stage_modules(neck).items():
        for m in modules:
            handles.append(m.register_forward_pre_hook(before))
            handles.append(m.register_forward_hook(after(stage)))
    times: Dict[str, List[float]] = {s: [] for s in (*STAGES, 'total')}
    try:
        with torch.no_grad():
            for r in range(warmup + repeats):
                for stage in spent:
                    spent[stage] = 0.0
                sync(device)
                start = now()
                neck(inputs)
                sync(device)
                total = now() - start
                if r < warmup:
                    continue
                for stage, seconds in spent.items():
                    times[stage].append(seconds)
                times['other'].append(total - sum(spent.values()))
                times['total'].append(total)
    finally:
        for h in handles:
            h.remove()
    return times
