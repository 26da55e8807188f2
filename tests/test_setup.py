"""setup.py: the OpenMP probe that decides how vtseg._C is built."""
import importlib.util
import stat
import sys

import pytest
from helpers import REPO
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler


@pytest.fixture(scope='module')
def setup_py():
    spec = importlib.util.spec_from_file_location('vtseg_setup', REPO / 'setup.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines its functions; setup() runs only as __main__
    return module


def _compiler():
    compiler = new_compiler()
    customize_compiler(compiler)
    return compiler


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='GCC is the compiler on Linux')
def test_the_compiler_here_has_openmp(setup_py):
    assert setup_py.compiler_has_openmp(_compiler())


def test_a_compiler_without_openmp_is_found_out(setup_py, tmp_path):
    """As Apple's clang: it compiles C++ but refuses -fopenmp, so vtseg._C is built
    without it (and its kernels run only where PyTorch has one thread)."""
    compiler = _compiler()
    wrapper = tmp_path / 'cc'
    wrapper.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && '
                       '{ echo "unsupported option -fopenmp" >&2; exit 1; }; done\n'
                       f'exec {compiler.compiler_so[0]} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    compiler.set_executables(compiler_so=[str(wrapper), *compiler.compiler_so[1:]],
                             linker_exe=[str(wrapper)])
    assert not setup_py.compiler_has_openmp(compiler)
