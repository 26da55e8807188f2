"""Metadata lives in pyproject.toml; this file builds vtseg's one compiled extension.

``vtseg._C`` holds the fused CPU kernels of the attention between a few tokens and a
map's pixels, and the few-rows linear kernel (``vtseg/csrc``). It is compiled against the
installed PyTorch, so install with ``--no-build-isolation`` (as for mmcv's ops). It is
optional: without PyTorch at build time, or when it fails to compile, vtseg installs
without it and runs PyTorch's products in its place
(``vtseg.models.layers.token_pixel_kernels.kernels_available()`` says which).
"""
import os

from setuptools import setup


def ext_modules():
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print('vtseg: PyTorch is not importable at build time: building without the '
              'fused CPU kernels (install with --no-build-isolation to build them)')
        return [], {}
    ext = CppExtension(
        'vtseg._C', ['vtseg/csrc/token_pixel_attention.cpp', 'vtseg/csrc/few_rows_linear.cpp'],
        depends=[f'vtseg/csrc/{h}' for h in ('isa.h', 'per_isa.h', 'simd.h',
                                             'token_pixel_kernels.h',
                                             'few_rows_linear_kernels.h')],
        # -fopenmp: at::parallel_for's threads are PyTorch's OpenMP threads. -Wno-psabi: the
        # vector types never cross a function boundary of another instruction set.
        extra_compile_args=['-O3', '-fopenmp', '-Wno-psabi'], extra_link_args=['-fopenmp'],
        # VTSEG_BUILD_EXT=required (tools/setup_env.sh) makes a failed build an error.
        optional=os.environ.get('VTSEG_BUILD_EXT') != 'required')
    return [ext], {'build_ext': BuildExtension.with_options(use_ninja=False)}


modules, cmdclass = ext_modules()
setup(ext_modules=modules, cmdclass=cmdclass)
