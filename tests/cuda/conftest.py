import os
import sys

# helpers of this directory (uniquely named: `tests/cuda` itself must not shadow the
# `cuda` namespace of cuda-python)
_HERE = os.path.dirname(os.path.abspath(__file__))
for _d in (_HERE, os.path.join(_HERE, "emu")):
    if _d not in sys.path:
        sys.path.insert(0, _d)
