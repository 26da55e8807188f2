"""Metadata lives in pyproject.toml; this file builds vtseg's one compiled extension.

``vtseg._C`` holds the fused CPU kernels of the attention between a few tokens and a
map's pixels, and the few-rows linear kernel (``vtseg/csrc``). It is compiled against the
installed PyTorch, so install with ``--no-build-isolation`` (as for mmcv's ops). It is
optional: without PyTorch at build time, or when it fails to compile, vtseg installs
without it and runs PyTorch's products in its place
(``vtseg.models.layers.token_pixel_kernels.kernels_available()`` says which).
"""
import os
import tempfile

from setuptools import setup

OPENMP = '-fopenmp'


def compiler_has_openmp(compiler) -> bool:
    """Whether ``compiler`` (a setuptools compiler) compiles and links an OpenMP program
    with ``-fopenmp``: GCC and clang with libomp do, Apple's clang does not."""
    from setuptools.errors import CompileError, LinkError
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, 'openmp.cpp')
        with open(src, 'w') as f:
            f.write('#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n')
        try:
            objects = compiler.compile([src], output_dir=tmp, extra_postargs=[OPENMP])
            compiler.link_executable(objects, os.path.join(tmp, 'openmp'),
                                     extra_postargs=[OPENMP])
        except (CompileError, LinkError):
            return False
    return True


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
        extra_compile_args=['-O3', OPENMP, '-Wno-psabi'], extra_link_args=[OPENMP],
        # VTSEG_BUILD_EXT=required (tools/setup_env.sh) makes a failed build an error.
        optional=os.environ.get('VTSEG_BUILD_EXT') != 'required')

    class BuildExt(BuildExtension.with_options(use_ninja=False)):
        """Builds without -fopenmp where the compiler has no OpenMP: the kernels then run
        on one thread, and vtseg runs PyTorch's products where it has more
        (``token_pixel_kernels.kernels_threaded()``)."""

        def build_extensions(self):
            if not compiler_has_openmp(self.compiler):
                print('vtseg: the C++ compiler has no OpenMP (-fopenmp): building vtseg._C '
                      'without it. Its kernels then run on one thread, so vtseg uses them '
                      'only with torch.set_num_threads(1); use GCC, or clang with libomp, '
                      'for threaded kernels.')
                for e in self.extensions:
                    e.extra_compile_args = [a for a in e.extra_compile_args if a != OPENMP]
                    e.extra_link_args = [a for a in e.extra_link_args if a != OPENMP]
            super().build_extensions()

    return [ext], {'build_ext': BuildExt}


if __name__ == '__main__':  # as pip and `python setup.py` run it (tests import it)
    modules, cmdclass = ext_modules()
    setup(ext_modules=modules, cmdclass=cmdclass)
