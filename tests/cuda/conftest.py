import os
import sys

import pytest

# helpers of this directory (uniquely named: `tests/cuda` itself must not shadow the
# `cuda` namespace of cuda-python)
_HERE = os.path.dirname(os.path.abspath(__file__))
for _d in (_HERE, os.path.join(_HERE, "emu")):
    if _d not in sys.path:
        sys.path.insert(0, _d)


@pytest.fixture
def cp():
    """The ``cupy`` module; skips the test without CuPy or without a CUDA device."""
    cupy = pytest.importorskip("cupy")
    if not cupy.cuda.is_available():
        pytest.skip("no CUDA device")
    return cupy
