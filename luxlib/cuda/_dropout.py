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
from ._modules import BLOCK, DTYPES, acc_scalar, grid_1d, grid_vectors, kernel_name, tuning


def supports(rng, x, training, **_):
    return bool(training) and is_generator(rng) and x.dtype in DTYPES


def _threshold(p):
    """``(word >> 8) > thr`` is ``u > p`` (doc/dropout.md, "Keep test")."""
    return np.uint32(math.floor(p * 2.0**24))


def _multiply(mod, u, v):
    """``u * v``: the kernel for equal shapes and dtypes, else the namespace's broadcasting."""
    xp = array_namespace(u)
    if u.shape != v.shape or u.dtype != v.dtype:
        return u * v
    u, v = xp.ascontiguousarray(u), xp.ascontiguousarray(v)
    out = xp.empty(u.shape, u.dtype)
    if u.size:
        mod.get_function(kernel_name("multiply", u.dtype))(
            grid_vectors(mod, u.size, u.itemsize), (BLOCK,), (u, v, out, np.int64(u.size))
        )
    return out


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
            y = x * mask
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
