"""Compiled Cython kernels (built by ``setup.py``).

``IMPORT_ERROR`` is ``None`` when every extension imported, else why not; the
looped backend registers nothing in that case and ``luxlib.show_config()`` reports
the reason. Each new ``*.pyx`` module is added to ``_EXTENSIONS``.
"""

import importlib

_EXTENSIONS = ("_openmp_helpers", "allocator", "activation", "conv", "dense", "matmul", "normalization", "dropout",
               "winograd", "launch")

try:
    for _name in _EXTENSIONS:
        importlib.import_module(f"{__name__}.{_name}")
except ImportError as exc:
    IMPORT_ERROR = (
        f"{type(exc).__name__}: {exc} (build the extensions with "
        "`python setup.py build_ext --inplace`, or install with `pip install .`)"
    )
else:
    IMPORT_ERROR = None
