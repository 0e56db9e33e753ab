"""A stand-in device memory for the binding tests: NumPy arrays that look like CuPy arrays
(their type's module is ``cupy``; CuPy's ``.data.ptr``), the way back from a pointer to
the allocation behind it, and allocations whose contents are undefined as a GPU's are."""

import functools
import types

import numpy as np


_NUMPY_EMPTY = np.empty


@functools.wraps(_NUMPY_EMPTY)  # NumPy's docstring: what copies numpy.empty (numpy.ma) reads
def poisoned_empty(shape, dtype=float, order="C", **kwargs):
    """``numpy.empty`` with every byte 0xFF for numeric dtypes: an element that a kernel (or
    the launch code) leaves unwritten reads as NaN or -1, as a GPU allocation's undefined
    contents would show, where a fresh NumPy allocation is often zeros (a partial sum nobody
    wrote would add nothing)."""
    a = _NUMPY_EMPTY(shape, dtype, order, **kwargs)
    if a.dtype.kind in "fciu":
        (a.T if a.flags.f_contiguous and not a.flags.c_contiguous else a).reshape(-1).view(np.uint8).fill(0xFF)
    return a


class DeviceArray(np.ndarray):
    """A NumPy array that looks like a CuPy one to luxlib (its type's module) and has CuPy's
    ``.data.ptr``, the address of its first element, and ``.data.device_id``: device 0, or the
    device of its :func:`on_device` subclass (arrays computed from it keep its class)."""

    device_id = 0

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0], device_id=self.device_id)


DeviceArray.__module__ = "cupy"
_ON_DEVICE = {0: DeviceArray}


def on_device(device):
    """The DeviceArray class of the stand-in device ``device``."""
    if device not in _ON_DEVICE:
        _ON_DEVICE[device] = type(f"DeviceArray{device}", (DeviceArray,), {"device_id": device, "__module__": "cupy"})
    return _ON_DEVICE[device]


class Memory:
    """The allocations of the stand-in device: a pointer back to the rest of its buffer."""

    def __init__(self):
        self.buffers = []

    def new(self, a):
        a = np.array(a, copy=True)
        self.buffers.append(a)
        return a.view(DeviceArray)

    def at(self, ptr, dtype):
        for b in self.buffers:
            start = b.__array_interface__["data"][0]
            if start <= ptr < start + b.nbytes:
                flat = b.reshape(-1).view(np.uint8)[ptr - start:]
                return flat[: flat.size - flat.size % np.dtype(dtype).itemsize].view(dtype)
        raise AssertionError(f"pointer {ptr:#x} is in no allocation")
