"""A stand-in device memory for the binding tests: NumPy arrays that look like CuPy arrays
(their type's module is ``cupy``; CuPy's ``.data.ptr``), and the way back from a pointer to
the allocation behind it."""

import types

import numpy as np


class DeviceArray(np.ndarray):
    """A NumPy array that looks like a CuPy one to luxlib (its type's module) and has CuPy's
    ``.data.ptr``: the address of its first element."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


DeviceArray.__module__ = "cupy"


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
