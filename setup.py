"""Build the Cython kernels in ``luxlib/_kernels`` (metadata lives in pyproject.toml).

OpenMP is used when a probe program compiled with the OpenMP flags of the compiler
setuptools picked also runs; otherwise (or with ``LUXLIB_NO_OPENMP=1``) the
kernels build single-threaded and a warning says so. ``LUXLIB_DEBUG=1`` turns
bounds checking back on; ``LUXLIB_ONLY=activation,...`` (development) builds only
the named kernel modules.

Development: ``python setup.py build_ext --inplace``; installation: ``pip install .``.
"""

import os
import subprocess
import sys
import tempfile
import warnings
from glob import glob

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = r"""
#include <omp.h>
#include <stdio.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    printf("%d threads\n", n);
    return !(n >= 1 && omp_get_max_threads() >= 1);
}
"""


def _env_flag(name):
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no")


def _openmp_flags(compiler):
    """(compile flags, link flags) that enable OpenMP for ``compiler``."""
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":  # Apple clang: libomp from Homebrew/conda
        return ["-Xpreprocessor", "-fopenmp"], ["-lomp"]
    return ["-fopenmp"], ["-fopenmp"]


def _probe_openmp(compiler, cflags, ldflags):
    """Whether a program built with these flags compiles, links and runs."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            os.chdir(tmp)
            with open("probe.c", "w") as f:
                f.write(OPENMP_PROBE)
            objects = compiler.compile(["probe.c"], extra_postargs=cflags)
            compiler.link_executable(objects, "probe", extra_postargs=ldflags)
            subprocess.run([os.path.join(tmp, compiler.executable_filename("probe"))],
                           check=True, capture_output=True, timeout=60)
            return True
        except Exception:  # any failure means: no usable OpenMP
            return False
        finally:
            os.chdir(cwd)


class BuildExt(build_ext):
    """build_ext that adds optimization and (when it works) OpenMP flags."""

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        cflags, ldflags = _openmp_flags(self.compiler)
        if _env_flag("LUXLIB_NO_OPENMP"):
            reason = "LUXLIB_NO_OPENMP is set"
        elif not _probe_openmp(self.compiler, cflags, ldflags):
            reason = f"the compiler cannot build and run an OpenMP program with {cflags + ldflags}"
        else:
            reason = None
        if reason is not None:
            warnings.warn(f"luxlib: building WITHOUT OpenMP ({reason}); the kernels will run "
                          "single-threaded", stacklevel=1)
            cflags, ldflags = [], []
        # no -ffast-math: NaN and Inf must propagate. -fno-trapping-math (FP exception
        # flags are never read) lets GCC turn the activations' selects into vector blends;
        # -fno-math-errno: errno is never read either. Results are unchanged by both.
        optimize = ["/O2"] if msvc else ["-O3", "-fno-trapping-math", "-fno-math-errno"]
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + optimize + cflags
            ext.extra_link_args = list(ext.extra_link_args or []) + ldflags
        super().build_extensions()


def _extensions():
    debug = _env_flag("LUXLIB_DEBUG")
    # development: LUXLIB_ONLY=name1,name2 builds just those kernel modules
    only = set(filter(None, os.environ.get("LUXLIB_ONLY", "").split(",")))
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": debug,
    }
    extensions = [
        Extension(
            "luxlib._kernels." + os.path.splitext(os.path.basename(path))[0],
            [path],
            include_dirs=[np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for path in sorted(glob(os.path.join("luxlib", "_kernels", "*.pyx")))
        if not only or os.path.splitext(os.path.basename(path))[0] in only
    ]
    return cythonize(extensions, compiler_directives=directives)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
