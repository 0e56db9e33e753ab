"""GPU ``dropout`` and ``alpha_dropout`` (kernels in ``dropout.cu``).

The key comes from the generic :func:`~luxlib._generic.philox.draw_key` and the
kernels implement the mask contract of doc/dropout.md, so a seed gives the same
mask bit for bit on the generic, Cython and CUDA paths. Launch code written against
a kernel module with CuPy's calling convention (see ``_bias_activation``).
"""

import functools
import math

import numpy as np

from .._generic.philox import draw_key, is_generator
from .._validation import array_namespace
from ._modules import BLOCK, DTYPES, acc_scalar, channels_arg, grid_1d, grid_vectors, kernel_name, launch, tuning


def supports(rng, x, training, **_):
    return bool(training) and is_generator(rng) and x.dtype in DTYPES


def _threshold(p):
    """``(word >> 8) > thr`` is ``u > p`` (doc/dropout.md, "Keep test")."""
    return np.uint32(math.floor(p * 2.0**24))


def _multiply(mod, u, v):
    """``u * v``: a kernel for equal dtypes and ``v`` of ``u``'s shape or broadcast against it
    along all but one run of adjacent axes (a mask with ``dims``), else the namespace's
    broadcasting."""
    xp = array_namespace(u)
    plan = _multiply_plan(tuning(mod), u.dtype, tuple(u.shape), tuple(v.shape)) if u.dtype == v.dtype else None
    if plan is None:
        return u * v
    u, v = xp.ascontiguousarray(u), xp.ascontiguousarray(v)
    out = xp.empty(u.shape, u.dtype)
    if u.size:
        launch(mod, plan, (u, v, out))
    return out


@functools.lru_cache(maxsize=256)
def _multiply_plan(tun, dtype, shape, vshape):
    """The launch plan of ``multiply`` (``vshape == shape``) or ``multiply_channel`` (``v``
    varies along one run of adjacent axes of ``shape``, of ``C`` elements with ``inner``
    elements after them), or None for other shapes."""
    if vshape != shape:
        if len(vshape) != len(shape) or any(b not in (1, a) for a, b in zip(shape, vshape)):
            return None
        varying = [i for i, b in enumerate(vshape) if b != 1] or [len(shape)]
        first, last = varying[0], varying[-1]
        if vshape[first:last + 1] != shape[first:last + 1]:  # a broadcast axis inside the run
            return None
    n = math.prod(shape)
    grid = grid_vectors(tun, n, np.dtype(dtype).itemsize)
    if vshape == shape or n == 0:  # (nothing is launched for n == 0)
        return kernel_name("multiply", dtype), grid, (BLOCK,), (np.int64(n),)
    C, inner = math.prod(shape[first:last + 1]), math.prod(shape[last + 1:])
    return kernel_name("multiply_channel", dtype), grid, (BLOCK,), (channels_arg(n // (C * inner), C, inner),)


def dropout_vjp(mod, rng, x, p, training, invp, shape, mask):
    """``((y, mask, rng), pullback)``; the pullback keeps the mask."""
    xp = array_namespace(x)
    if mask is None:
        key, rng = draw_key(rng)
        mask = xp.empty(tuple(shape), x.dtype)
        n = mask.size
        fused = tuple(shape) == tuple(x.shape)
        xc = xp.ascontiguousarray(x) if fused else mask
        y = xp.empty(x.shape, x.dtype) if fused else mask
        if n:
            name, grid, head, tail = _mask_plan(tuning(mod), x.dtype, n, p, invp, fused)
            mod.get_function(name)(grid, (BLOCK,), (mask, xc, y) + head + (np.uint32(key[0]), np.uint32(key[1])) + tail)
        if not fused:
            y = _multiply(mod, x, mask)
    else:
        y = _multiply(mod, x, mask)
    return (y, mask, rng), lambda dy: {"x": _multiply(mod, dy, mask)}


@functools.lru_cache(maxsize=256)  # launch overhead: the scalars take microseconds to build
def _mask_plan(tun, dtype, n, p, invp, fused):
    """``(kernel, grid, arguments before the key, arguments after it)`` of ``dropout_mask``
    (``tun``: the module's :data:`~._modules.Tuning`)."""
    return (kernel_name("dropout_mask", dtype), grid_1d(tun, -(-n // 4)), (np.int64(n),),
            (_threshold(p), acc_scalar(dtype, invp), np.int32(fused)))


def _alpha_forward(mod, rng, x, p, alpha, A, B, keep):
    xp = array_namespace(x)
    key, rng = draw_key(rng)
    x = xp.ascontiguousarray(x)
    y = xp.empty(x.shape, x.dtype)
    n = x.size
    if n:
        mod.get_function(kernel_name("alpha_dropout_forward", x.dtype))(
            grid_1d(mod, -(-n // 4)), (BLOCK,),
            (x, y, xp.empty((0,), xp.uint8) if keep is None else keep, np.int64(n), np.uint32(key[0]), np.uint32(key[1]),
             _threshold(p), acc_scalar(x.dtype, alpha), acc_scalar(x.dtype, A), acc_scalar(x.dtype, B),
             np.int32(keep is not None)),
        )
    return y, rng


def alpha_dropout_forward(mod, rng, x, p, training, alpha, A, B):
    return _alpha_forward(mod, rng, x, p, alpha, A, B, None)


def alpha_dropout_vjp(mod, rng, x, p, training, alpha, A, B):
    """``((y, rng), pullback)``; the pullback keeps the keep decisions, one byte each."""
    xp = array_namespace(x)
    keep = xp.empty(x.shape, xp.uint8)
    out = _alpha_forward(mod, rng, x, p, alpha, A, B, keep)

    def pullback(dy):
        dy = xp.ascontiguousarray(dy)
        dx = xp.empty(dy.shape, dy.dtype)
        if dy.size:
            mod.get_function(kernel_name("alpha_dropout_backward", dy.dtype))(
                grid_1d(mod, dy.size), (BLOCK,),
                (keep, dy, dx, np.int64(dy.size), acc_scalar(dy.dtype, A)),
            )
        return {"x": dx}

    return out, pullback
