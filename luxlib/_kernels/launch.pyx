"""The GPU path's kernel launches: the driver's ``cuLaunchKernel``, its parameters built in C.

CuPy's ``RawKernel`` call wraps each argument in a Python object before it calls the
driver (an array in a ``CArray`` of its shape and strides, a scalar in a ``CScalar``):
on session 12's H100 a 4-argument kernel cost 6.04 us of host time a launch through it,
against 3.66 us for the driver's launch alone. :func:`launch` passes an array as its
device pointer and a NumPy scalar (a structured one too: a struct by value) as its bytes
through the buffer protocol, with no object made per argument, and releases the GIL for
the driver call. ``luxlib/cuda/_modules.py`` binds it to ``libcuda``'s ``cuLaunchKernel``
(:func:`bind`); tests bind a stand-in with the same signature.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport intptr_t, uintptr_t

import numpy as np

# CUresult cuLaunchKernel(CUfunction f, unsigned gridDimX, gridDimY, gridDimZ, blockDimX,
# blockDimY, blockDimZ, unsigned sharedMemBytes, CUstream hStream, void **kernelParams,
# void **extra)
ctypedef int (*launch_fn)(void*, unsigned int, unsigned int, unsigned int, unsigned int, unsigned int,
                          unsigned int, unsigned int, void*, void**, void**) noexcept nogil

cdef enum:
    MAX_ARGS = 64  # the kernels take at most ~16

cdef launch_fn _launch = NULL
cdef object _scalar = np.generic


cdef int _launch_nothing(void* f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                         unsigned int by, unsigned int bz, unsigned int shared, void* stream, void** params,
                         void** extra) noexcept nogil:
    return 0


#: the address of a launch function that launches nothing: bound, :func:`launch` costs what
#: luxlib adds to the driver's launch (the asv benchmark of the launch code times it)
NOTHING = <intptr_t><void*>_launch_nothing


def bind(intptr_t address):
    """Launch through the function at ``address`` (``cuLaunchKernel``, or a stand-in with its
    signature; 0 unbinds); returns the address bound before (tests put it back)."""
    global _launch
    cdef intptr_t before = <intptr_t><void*>_launch
    _launch = <launch_fn><void*>address
    return before


cdef int _dims(tuple dims, unsigned int* out) except -1:
    """A grid or block of 1 to 3 extents as 3, missing ones 1, each at least 1 (as CuPy's call)."""
    cdef Py_ssize_t k, n = len(dims)
    cdef long long v
    if not 1 <= n <= 3:
        raise ValueError(f"launch: a grid or block has 1 to 3 extents, got {dims!r}")
    for k in range(3):
        v = dims[k] if k < n else 1
        if v > 0x7FFFFFFF:
            raise ValueError(f"launch: an extent of {dims!r} is beyond the driver's")
        out[k] = <unsigned int>max(1, v)
    return 0


def launch(intptr_t function, tuple grid, tuple block, args, intptr_t stream):
    """Launch the kernel ``function`` (a ``CUfunction``) on ``stream`` (a ``CUstream``).

    Parameters
    ----------
    function, stream : int
        The driver's handles.
    grid, block : tuple of int
        1 to 3 extents each.
    args : sequence
        The kernel's arguments in order: arrays with ``.data.ptr`` (CuPy's), passed as that
        device pointer, and NumPy scalars (``numpy.generic``), passed as their bytes (a
        structured scalar as a struct by value). Their types must be the kernel's: nothing
        is converted.

    Returns
    -------
    int
        The driver's status (0: launched).
    """
    if type(args) is not tuple:
        args = tuple(args)
    cdef Py_ssize_t n = len(args), i, held = 0
    cdef void* params[MAX_ARGS]
    cdef uintptr_t pointers[MAX_ARGS]
    cdef Py_buffer views[MAX_ARGS]
    cdef unsigned int g[3]
    cdef unsigned int b[3]
    cdef void* f = <void*>function
    cdef void* s = <void*>stream
    cdef int status
    if _launch == NULL:
        raise RuntimeError("launch: no launch function bound")
    if n > MAX_ARGS:
        raise ValueError(f"launch: {n} arguments, at most {MAX_ARGS}")
    _dims(grid, g)
    _dims(block, b)
    try:
        for i in range(n):
            a = args[i]
            if isinstance(a, _scalar):
                PyObject_GetBuffer(a, &views[held], PyBUF_SIMPLE)
                held += 1
                params[i] = views[held - 1].buf
            else:
                try:
                    pointers[i] = <uintptr_t>a.data.ptr
                except AttributeError:
                    raise TypeError(f"launch: argument {i} is neither a device array nor a NumPy scalar: "
                                    f"{type(a).__name__}") from None
                params[i] = &pointers[i]
        with nogil:
            status = _launch(f, g[0], g[1], g[2], b[0], b[1], b[2], 0, s, params, NULL)
    finally:
        for i in range(held):
            PyBuffer_Release(&views[i])
    return status
