"""The GPU tests on the CPU: a stand-in ``cupy`` over NumPy whose arrays are
:class:`device_memory.DeviceArray` s (luxlib takes them for CuPy arrays and runs its GPU path)
on stand-in devices (:class:`Devices`: a current device, and ``cuda.Device`` to switch it),
with luxlib's kernel modules replaced by the emulated ones (``emu_module``), cuBLAS by
``emu_blas`` and cuDNN by none.

``LUXLIB_EMULATED_GPU=1 pytest -m gpu tests`` runs the ``gpu``-marked tests this way (the
``cp`` fixture of ``conftest.py`` calls :func:`install`): their own code, the GPU path's launch
code at the GPU's launch sizes (no lowered test hooks), and the kernels in the emulator. Tests
marked ``real_cupy`` (a ``cupy.random`` generator, luxlib's launcher against CuPy's call) and
the cuDNN engine skip. What it cannot show is what the emulator cannot (doc/cuda.md), plus
CuPy itself: its allocations and array operations are NumPy's here.
"""

import sys
import types

import emu_blas
import emu_module
import numpy as np
from device_memory import DeviceArray, on_device, poisoned_empty

import luxlib.cuda
from luxlib.cuda import _blas, _cudnn


class Devices:
    """Stand-in devices: ``current`` is CuPy's current device (``cuda.runtime.getDevice``,
    ``with cuda.Device(d)``), where the stand-in's functions put the arrays they make."""

    def __init__(self):
        self.current, self.entered = 0, []

    def get_device(self):
        return self.current

    def device(self, device=None):
        """``cuda.Device(device)``: the device, the current one by default (its ``id``); in a
        ``with`` block, the current device."""
        return _Device(self, self.current if device is None else device)

    def put(self, a):
        """``a`` (a NumPy array) as an array of the current device."""
        return a.view(on_device(self.current))


class _Device:
    def __init__(self, devices, id):
        self.devices, self.id = devices, id

    def __enter__(self):
        self.before, self.devices.current = self.devices.current, self.id
        self.devices.entered.append(self.id)
        return self

    def __exit__(self, *exc):
        self.devices.current = self.before


def numpy_as_cupy(cuda, devices=None):
    """A ``cupy`` module over NumPy: NumPy's names, functions returning DeviceArrays of the
    current device of ``devices`` (a :class:`Devices`), ``asarray``/``asnumpy`` copying between
    host and "device", ``empty`` filled with 0xFF bytes (``device_memory.poisoned_empty``), and
    ``cuda`` as given."""
    devices = devices or Devices()
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda

    def device(f):  # f with its NumPy arrays returned as DeviceArrays (CuPy's return CuPy's)
        def wrapped(*args, **kwargs):
            out = f(*args, **kwargs)
            return devices.put(out) if type(out) is np.ndarray else out

        return wrapped

    def asarray(a, dtype=None):  # a device copy of a host array; a DeviceArray as it is
        if isinstance(a, DeviceArray) and dtype in (None, a.dtype):
            return a
        return devices.put(np.array(a, dtype=dtype))

    cupy.asarray = asarray
    cupy.empty = device(poisoned_empty)  # undefined contents, as a GPU allocation's
    cupy.asnumpy = lambda a: np.array(a)
    cupy.testing = types.SimpleNamespace(assert_array_equal=np.testing.assert_array_equal)

    def attribute(name):
        if name == "random":  # a CuPy generator is not NumPy's: the tests that need one skip
            raise AttributeError("the emulated cupy has no random module")
        obj = getattr(np, name)
        return device(obj) if callable(obj) and not isinstance(obj, type) else obj

    cupy.__getattr__ = attribute
    return cupy


def install(monkeypatch):
    """Puts the stand-in CuPy in ``sys.modules`` and the emulated kernels, cuBLAS and no cuDNN
    behind luxlib's GPU path, until ``monkeypatch`` undoes it; returns the stand-in."""
    devices = Devices()
    # the runtime's calls that luxlib and its benchmark's CUDA device make
    runtime = types.SimpleNamespace(getDevice=devices.get_device, deviceSynchronize=lambda: None,
                                    runtimeGetVersion=lambda: 0,
                                    getDeviceProperties=lambda d: {"name": b"emulated", "totalGlobalMem": 0})
    cuda = types.SimpleNamespace(is_available=lambda: True, Device=devices.device, runtime=runtime)
    cupy = numpy_as_cupy(cuda, devices)
    cupy.__version__ = "emulated"
    cupy.devices = devices
    blas = emu_blas.EmuBLAS()
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(luxlib.cuda, "get_module", emu_module.shared)
    for owner in (luxlib.cuda, _blas):
        monkeypatch.setattr(owner, "get_blas", lambda: blas)
    for owner in (luxlib.cuda, _cudnn):
        monkeypatch.setattr(owner, "get_cudnn", lambda: None)
    return cupy
