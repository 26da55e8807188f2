# Vendored from mmseg 1.2.2 configs/_base_/default_runtime.py (mmseg:: base lookups need
# pkg_resources; a local copy keeps configs loadable everywhere).
default_scope = 'mmseg'
# vtseg registers its models, datasets and checkpoint hooks on import, so that mmseg's own
# tools/train.py and tools/test.py, `mim train` and a plain Runner.from_cfg(cfg) script
# get the same behaviour as vtseg's tools. The checkpoint hooks (SafeCheckpointHook,
# CheckpointReportHook) are declared in `default_hooks` next to the schedule
# (schedules/*.py, demo/fpn_r18_vtdemo.py): mmengine allows a key in one base file only.
custom_imports = dict(imports=['vtseg'], allow_failed_imports=False)
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(
    type='SegLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(by_epoch=False)
log_level = 'INFO'
load_from = None
resume = False

tta_model = dict(type='SegTTAModel')
# vtseg (docs/reliability.md): one training run per work_dir; heads, label loaders and
# dataset agree on the class count; skipped bad samples are counted; freed host (CPU)
# memory is reused instead of page-faulting every new feature map in again
# (vtseg/engine/host_memory.py, docs/benchmarks.md). Keep these four when a config sets
# custom_hooks.
custom_hooks = [
    dict(type='WorkDirLockHook'),
    dict(type='ClassCountCheckHook'),
    dict(type='SkippedSamplesHook'),
    dict(type='HostMemoryHook', reuse=True),
]
