"""GPU ``fast_activation`` and ``bias_activation`` (kernels in ``bias_activation.cu``).

Launch code written against a kernel module with CuPy's calling convention
``mod.get_function(name)(grid, block, args)``: a ``cupy.RawModule`` on a GPU, the
CPU emulation of ``tests/cuda/emu`` in the tests. Arrays go in C-contiguous,
scalars explicitly typed.
"""

import math

import numpy as np

from .._validation import array_namespace
from ._modules import BLOCK, acc_scalar, grid_1d, kernel_name

DTYPES = ("float16", "float32", "float64")


def _geometry(x):
    """x viewed as (outer, C, inner) around the bias axis."""
    if x.ndim == 1:
        return 1, x.shape[0], 1
    if x.ndim == 0:
        return 1, 1, 1
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def _param(act, dtype):
    return acc_scalar(dtype, act.params[0] if act.params else 0.0)


def supports(act, x, bias=None):
    return (
        act.id >= 0
        and act.has_derivative
        and x.dtype.name in DTYPES
        and (bias is None or bias.dtype == x.dtype)
    )


def forward(mod, act, x, bias=None):
    """``act(x + bias)`` (bias along axis 1, the only axis of 1-D x; None for none)."""
    xp = array_namespace(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty(x.shape, x.dtype)
    n = x.size
    if n:
        _, C, inner = _geometry(x)
        has_bias = bias is not None
        b = xp.ascontiguousarray(bias) if has_bias else x  # not read without a bias
        mod.get_function(kernel_name("bias_act_forward", x.dtype))(
            grid_1d(mod, n), (BLOCK,),
            (x, b, y, np.int64(n), np.int64(C), np.int64(inner), np.int32(has_bias),
             np.int32(act.id), _param(act, x.dtype)),
        )
    return y


def vjp(mod, act, x, bias=None):
    """``(y, pullback)``; the pullback keeps y for output-only activations, else x and bias
    (references to the inputs: the pre-activation is recomputed, never stored)."""
    xp = array_namespace(x)
    x = xp.ascontiguousarray(x)
    has_bias = bias is not None
    b = xp.ascontiguousarray(bias) if has_bias else None
    y = forward(mod, act, x, b)
    outer, C, inner = _geometry(x)
    if act.output_only:
        src, add_bias = y, False
    else:
        src, add_bias = x, has_bias
    p = _param(act, x.dtype)
    bias_arg = b if has_bias else x  # not read when add_bias is false

    def pullback(dy):
        dy = xp.ascontiguousarray(dy)
        dz = xp.empty(dy.shape, dy.dtype)
        n = dy.size
        db = None
        tail = (np.int32(add_bias), np.int32(act.id), p)
        if has_bias:
            db = xp.empty((C,), dy.dtype)
            if n == 0:
                db[...] = 0
            elif inner == 1:
                mod.get_function(kernel_name("bias_act_backward_db_rows", dy.dtype))(
                    (-(-C // 32),), (32, 8),
                    (dy, src, bias_arg, dz, db, np.int64(outer), np.int64(C)) + tail,
                )
            else:
                mod.get_function(kernel_name("bias_act_backward_db", dy.dtype))(
                    (C,), (BLOCK,),
                    (dy, src, bias_arg, dz, db, np.int64(outer), np.int64(C), np.int64(inner)) + tail,
                )
        elif n:
            mod.get_function(kernel_name("bias_act_backward", dy.dtype))(
                grid_1d(mod, n), (BLOCK,),
                (dy, src, bias_arg, dz, np.int64(n), np.int64(C), np.int64(inner)) + tail,
            )
        return {"x": dz, "bias": db}

    return y, pullback
