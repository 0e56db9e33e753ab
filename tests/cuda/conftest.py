import os
import sys

import numpy as np
import numpy.ma  # noqa: F401
import pytest
import scipy.special  # noqa: F401

# numpy.ma and scipy.special are imported before _undefined_allocations patches numpy.empty:
# on their first import they copy numpy's functions (numpy.ma wraps numpy.empty and reads its
# docstring), which must be NumPy's own

# helpers of this directory (uniquely named: `tests/cuda` itself must not shadow the
# `cuda` namespace of cuda-python)
_HERE = os.path.dirname(os.path.abspath(__file__))
for _d in (_HERE, os.path.join(_HERE, "emu")):
    if _d not in sys.path:
        sys.path.insert(0, _d)


@pytest.fixture
def cp(request):
    """The ``cupy`` module; skips the test without CuPy or without a CUDA device. With
    ``LUXLIB_EMULATED_GPU=1``, a stand-in over NumPy with the emulated kernels behind luxlib's
    GPU path (``emu/emu_cupy.py``), and tests marked ``real_cupy`` skip."""
    if os.environ.get("LUXLIB_EMULATED_GPU") == "1":
        if request.node.get_closest_marker("real_cupy"):
            pytest.skip("needs the real CuPy (LUXLIB_EMULATED_GPU=1 emulates it)")
        import emu_cupy

        return emu_cupy.install(request.getfixturevalue("monkeypatch"))
    cupy = pytest.importorskip("cupy")
    if not cupy.cuda.is_available():
        pytest.skip("no CUDA device")
    return cupy


@pytest.fixture(autouse=True)
def _undefined_allocations(monkeypatch):
    """``numpy.empty`` returns 0xFF bytes here (``device_memory.poisoned_empty``): the launch
    code allocates with ``xp.empty``, and an element that no kernel writes must show, as it
    would on a GPU."""
    import device_memory

    monkeypatch.setattr(np, "empty", device_memory.poisoned_empty)
