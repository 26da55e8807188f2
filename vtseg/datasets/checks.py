"""Check a config's dataset folders before anything is built.

mmseg finds its samples by listing folders when the dataset is built. A folder that does
not exist fails with a bare ``FileNotFoundError``; an empty one with ``ValueError: need at
least one array to concatenate`` from deep inside mmengine; an image without its label map
only when that sample is drawn, possibly hours into training. :func:`check_data_cfg` walks
every ``*_dataloader.dataset`` of a config (through dataset wrappers such as
``RepeatDataset`` and ``ConcatDataset``), resolves ``data_root`` / ``data_prefix`` /
``ann_file`` the way mmengine does, and raises one :class:`DatasetNotFoundError` that names
the folder and says how to prepare the dataset.

Command line: ``python -m vtseg.datasets.checks CONFIG [--cfg-options ...]``.
"""
from __future__ import annotations

import argparse
import inspect
import os
import os.path as osp
import sys
from typing import Dict, Iterator, List, Optional, Tuple

from mmengine.config import Config

__all__ = ['DatasetNotFoundError', 'PREPARE_HINTS', 'check_data_cfg', 'check_dataset_cfg']

#: How to get each dataset into the layout mmseg's dataset class expects, by dataset type.
PREPARE_HINTS: Dict[str, str] = {
    'LIPDataset': (
        'LIP (Look Into Person, 20 classes) layout expected by mmseg:\n'
        '  data/LIP/train_images/*.jpg   data/LIP/train_segmentations/*.png\n'
        '  data/LIP/val_images/*.jpg     data/LIP/val_segmentations/*.png\n'
        'Download TrainVal_images.zip and TrainVal_parsing_annotations.zip from the LIP '
        'project page and move the four folders named above into data/LIP (labels are '
        'single-channel PNGs with values 0..19).'),
    'COCOStuffDataset': (
        'COCO-Stuff 164k (171 classes) layout expected by mmseg:\n'
        '  data/coco_stuff164k/images/{train2017,val2017}/*.jpg\n'
        '  data/coco_stuff164k/annotations/{train2017,val2017}/*_labelTrainIds.png\n'
        'Unzip COCO train2017.zip and val2017.zip into images/ and '
        'stuffthingmaps_trainval2017.zip into annotations/, then write the '
        '*_labelTrainIds.png files with mmseg\'s converter (shipped inside the mmseg '
        'package):\n'
        '  python "$(python -c \'import mmseg, os; print(os.path.dirname(mmseg.__file__))\')'
        '/.mim/tools/dataset_converters/coco_stuff164k.py" data/coco_stuff164k --nproc 8'),
}

_GENERIC_HINT = ('See "Prepare datasets" in the MMSegmentation documentation for the layout '
                 'of {type}.')
_SKIPPED_PREFIXES = ('s3://', 'http://', 'https://', 'petrel://', 'sproject://')
_MAX_LISTED = 5


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder or file named by a config is missing, empty or incomplete."""


def _is_remote(path: str) -> bool:
    return '://' in path or path.startswith(_SKIPPED_PREFIXES)


def _join(root: str, path: str) -> str:
    """mmengine's ``BaseDataset._join_prefix``: relative paths hang off ``data_root``."""
    if path and (osp.isabs(path) or not root):
        return path
    return osp.join(root, path) if root else path


def _class_default(dataset_type, name: str) -> Optional[str]:
    """Default of ``name`` in the dataset class's ``__init__`` (e.g. ``img_suffix``)."""
    if isinstance(dataset_type, str):
        from mmseg.registry import DATASETS
        dataset_type = DATASETS.get(dataset_type)
    if dataset_type is None:
        return None
    for klass in inspect.getmro(dataset_type):
        param = inspect.signature(klass.__init__).parameters.get(name)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return None


def _leaf_datasets(cfg: dict, where: str) -> Iterator[Tuple[str, dict]]:
    """Yield ``(config path, dataset cfg)`` for every dataset under wrappers."""
    if 'datasets' in cfg:  # ConcatDataset
        for i, sub in enumerate(cfg['datasets']):
            yield from _leaf_datasets(sub, f'{where}.datasets[{i}]')
    elif isinstance(cfg.get('dataset'), dict):  # RepeatDataset, ClassBalancedDataset, ...
        yield from _leaf_datasets(cfg['dataset'], f'{where}.dataset')
    else:
        yield where, cfg


def _files_with_suffix(folder: str, suffix: str) -> List[str]:
    """Paths relative to ``folder`` ending with ``suffix``, recursive, as mmseg lists them."""
    found = []
    for root, _, files in os.walk(folder, followlinks=True):
        rel = osp.relpath(root, folder)
        for name in files:
            if name.endswith(suffix):
                found.append(name if rel == '.' else osp.join(rel, name))
    return sorted(found)


def _fail(where: str, dataset_type: str, problem: str, data_root: str) -> None:
    hint = PREPARE_HINTS.get(str(dataset_type), _GENERIC_HINT.format(type=dataset_type))
    if str(dataset_type) in PREPARE_HINTS:
        hint += '\nStep by step: docs/datasets.md in the vtseg repository.'
    raise DatasetNotFoundError(
        f'{where} ({dataset_type}): {problem}\n{hint}\n'
        f'If the dataset lives elsewhere, point the config at it, e.g. '
        f'--cfg-options {where}.data_root=/path/to/dataset '
        f'(currently data_root={data_root!r}).')


def check_dataset_cfg(dataset_cfg: dict, where: str = 'dataset') -> int:
    """Check one dataset config (wrappers included); return the number of samples found.

    Checks, for each local dataset with ``data_root``/``data_prefix`` (mmseg's layout):
    the image folder exists and holds at least one ``img_suffix`` file; the label folder
    exists; every image has its label map (``seg_map_suffix``); an ``ann_file`` exists and
    lists at least one existing image. Remote paths (``s3://`` ...) are not checked.

    Args:
        dataset_cfg: the ``dataset`` dict of a dataloader config.
        where: its path in the config, used in the message.

    Raises:
        DatasetNotFoundError: naming the folder or files and how to prepare the dataset.
    """
    total = 0
    for path, cfg in _leaf_datasets(dataset_cfg, where):
        dtype = cfg.get('type', '?')
        root = cfg.get('data_root') or ''
        prefix = dict(cfg.get('data_prefix') or {})
        img_dir = _join(root, prefix.get('img_path', ''))
        seg_dir = _join(root, prefix['seg_map_path']) if 'seg_map_path' in prefix else None
        if _is_remote(img_dir) or (cfg.get('backend_args') or {}).get('backend', 'local') \
                != 'local':
            continue
        img_suffix = cfg.get('img_suffix', _class_default(dtype, 'img_suffix')) or ''
        seg_suffix = cfg.get('seg_map_suffix', _class_default(dtype, 'seg_map_suffix')) or ''
        for name, folder in [('image', img_dir), ('label', seg_dir)]:
            if folder is not None and not osp.isdir(folder):
                what = 'is a file, not a folder' if osp.exists(folder) else 'does not exist'
                _fail(path, dtype, f'{name} folder {folder!r} {what}.', root)

        ann_file = cfg.get('ann_file') or ''
        ann_path = _join(root, ann_file) if ann_file else ''
        if ann_path and not osp.isdir(ann_path):  # mmseg: a list of names, one per line
            if not osp.isfile(ann_path):
                _fail(path, dtype, f'ann_file {ann_path!r} does not exist.', root)
            with open(ann_path) as f:
                names = [line.strip() for line in f if line.strip()]
            if not names:
                _fail(path, dtype, f'ann_file {ann_path!r} is empty.', root)
            images = [n + img_suffix for n in names]
        else:
            images = _files_with_suffix(img_dir, img_suffix)
            if not images:
                _fail(path, dtype, f'image folder {img_dir!r} holds no "*{img_suffix}" '
                      f'file (searched recursively).', root)

        missing = [osp.join(img_dir, i) for i in images if not osp.isfile(osp.join(img_dir, i))]
        if missing:
            _fail(path, dtype, f'{len(missing)} of {len(images)} images listed in '
                  f'{ann_path!r} do not exist, e.g. {missing[:_MAX_LISTED]}.', root)
        if seg_dir is not None:
            labels = [osp.join(seg_dir, i[:len(i) - len(img_suffix)] + seg_suffix)
                      for i in images]
            unlabeled = [lab for lab in labels if not osp.isfile(lab)]
            if unlabeled:
                _fail(path, dtype, f'{len(unlabeled)} of {len(images)} images in {img_dir!r} '
                      f'have no label map "*{seg_suffix}" in {seg_dir!r}, e.g. '
                      f'{unlabeled[:_MAX_LISTED]}.', root)
        total += len(images)
    return total


def check_data_cfg(cfg: Config,
                   splits: Tuple[str, ...] = ('train', 'val', 'test')) -> Dict[str, int]:
    """Check the dataset of every ``{split}_dataloader`` in ``cfg`` (see
    :func:`check_dataset_cfg`); call it before building the Runner.

    Returns:
        ``{'train_dataloader': number of samples, ...}`` for the splits present.
    """
    counts = {}
    for split in splits:
        key = f'{split}_dataloader'
        loader = cfg.get(key)
        if loader and loader.get('dataset'):
            counts[key] = check_dataset_cfg(loader['dataset'], f'{key}.dataset')
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m vtseg.datasets.checks CONFIG``: exit 0, or one ``error:`` line and 2."""
    from ..cli import (
        ArgumentParser,
        CfgOptionsAction,
        config_file,
        merge_cfg_options,
        read_config,
    )

    parser = ArgumentParser(description='Check the dataset folders of a config.')
    parser.add_argument('config', type=config_file)
    parser.add_argument('--cfg-options', nargs='+', action=CfgOptionsAction, default={})

    def run(args: argparse.Namespace) -> int:
        cfg = merge_cfg_options(read_config(args.config), args.cfg_options)
        for key, n in check_data_cfg(cfg).items():
            print(f'{key}: {n} samples')
        return 0

    return parser.run(run, argv)


if __name__ == '__main__':
    sys.exit(main())
