"""Config files and ``--cfg-options KEY=VALUE ...`` from the command line, checked.

:func:`read_config` is ``Config.fromfile`` with errors that name the config file (mmengine
reports a syntax error as ``(<unknown>, line 1)`` and a missing ``_base_`` file as a bare
``FileNotFoundError``).

mmengine's ``DictAction`` fails on an entry without ``=`` with ``not enough values to
unpack``, and ``Config.merge_from_dict`` silently creates whatever a mistyped key names
(``modle.neck.num_tokens=8`` trains the config's model unchanged). :class:`CfgOptionsAction`
rejects a malformed entry at parse time; :func:`merge_cfg_options` requires every key's
parent (``model.neck`` for ``model.neck.num_tokens``) to exist in the config, suggests
close names, and then merges as mmengine does. A new last key is allowed (it adds an
argument); whether the component accepts it is checked when it is built.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Any, Dict, Mapping, Optional

from mmengine.config import Config, DictAction

__all__ = ['CfgOptionError', 'CfgOptionsAction', 'ConfigFileError', 'merge_cfg_options',
           'read_config']

_EXAMPLE = 'e.g. --cfg-options model.decode_head.num_classes=20 train_cfg.max_iters=100'


class CfgOptionError(KeyError):
    """A ``--cfg-options`` key that does not fit the config."""

    def __str__(self) -> str:  # a KeyError would print its message quoted
        return str(self.args[0]) if self.args else ''


class ConfigFileError(ValueError):
    """A config file that cannot be read; the message names the file."""


def read_config(path: str) -> Config:
    """``Config.fromfile(path)``; raises :class:`ConfigFileError` naming ``path``."""
    try:
        return Config.fromfile(path)
    except SyntaxError as e:
        raise ConfigFileError(f'config {path}: syntax error: {e.msg} (line {e.lineno} of '
                              f'{e.filename if e.filename not in (None, "<unknown>") else path}'
                              ')') from e
    except FileNotFoundError as e:
        raise ConfigFileError(f'config {path}: {e.filename} does not exist (a _base_ file it '
                              'inherits?)') from e
    except Exception as e:  # noqa: BLE001 - NameError, ImportError... in the config's code
        raise ConfigFileError(f'config {path} fails to load: {type(e).__name__}: {e}') from e


class CfgOptionsAction(DictAction):
    """mmengine's ``DictAction`` that first checks each entry is ``KEY=VALUE``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        values = list(values or [])
        spaced = any(v == '=' or v.startswith('=') or v.endswith('=') for v in values)
        for item in values:
            key, sep, _ = item.partition('=')
            if not sep:
                hint = ''
                if item.endswith(('.py', '.pth', '.json', '.yaml')):
                    hint = ('; positional arguments go before --cfg-options, which takes '
                            'every word after it')
                elif spaced:
                    hint = "; write KEY=VALUE without spaces around '='"
                raise argparse.ArgumentError(
                    self, f'{item!r} is not KEY=VALUE (no "=" in it){hint}; {_EXAMPLE}')
            if not key or any(not part for part in key.split('.')):
                raise argparse.ArgumentError(
                    self, f'{item!r}: the key {key!r} is empty or has an empty part '
                    f"(write dotted keys like model.neck.num_tokens, no spaces around '='); "
                    f'{_EXAMPLE}')
        try:
            super().__call__(parser, namespace, values, option_string)
        except (AssertionError, ValueError) as err:  # e.g. "Imbalanced brackets exist in"
            raise argparse.ArgumentError(
                self, f'{err}; quote list values and write them without spaces, e.g. '
                "'model.neck.in_channels=[64,128,256,512]'") from None


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=3, cutoff=0.6)
    return f' (did you mean {" or ".join(repr(c) for c in close)}?)' if close else ''


def _check_key(cfg: Config, key: str) -> None:
    node: Any = cfg._cfg_dict if isinstance(cfg, Config) else cfg
    parts = key.split('.')
    for depth, part in enumerate(parts[:-1]):
        where = '.'.join(parts[:depth]) or 'the config'
        here = '.'.join(parts[:depth + 1])
        if isinstance(node, Mapping):
            if part not in node:
                raise CfgOptionError(
                    f'--cfg-options {key}: {where} has no key {part!r}'
                    f'{_suggest(part, node.keys())}, so {here!r} does not exist; check the '
                    'spelling (print the config with mmengine: '
                    'python -c "from mmengine import Config; '
                    'print(Config.fromfile(\'CONFIG\').pretty_text)")')
            node = node[part]
        elif isinstance(node, (list, tuple)):
            if not part.lstrip('-').isdigit() or not -len(node) <= int(part) < len(node):
                raise CfgOptionError(
                    f'--cfg-options {key}: {where} is a list of {len(node)} entries; '
                    f'{part!r} is not an index 0..{len(node) - 1}')
            node = node[int(part)]
        else:
            raise CfgOptionError(
                f'--cfg-options {key}: {where} is {node!r} ({type(node).__name__}), which has '
                f'no key {part!r}; to replace it, write {where}=NEW_VALUE')
    parent = '.'.join(parts[:-1])
    if parent and not isinstance(node, (Mapping, list, tuple)):
        raise CfgOptionError(
            f'--cfg-options {key}: {parent} is {node!r} ({type(node).__name__}), which has '
            f'no key {parts[-1]!r}; to replace it, write {parent}=NEW_VALUE')


def merge_cfg_options(cfg: Config, options: Optional[Dict[str, Any]]) -> Config:
    """Check every key of ``options`` against ``cfg`` (see module docstring), then merge.

    Raises:
        CfgOptionError: naming the key, the missing part and close names.
    """
    if options:
        for key in options:
            _check_key(cfg, key)
        cfg.merge_from_dict(dict(options))
    return cfg
