"""Looped (Cython/OpenMP) ``fast_activation`` and ``bias_activation``.

Glue around :mod:`luxlib._kernels.activation`: views ``x`` as a C-contiguous
``(N, C, S)`` array (copying once when it is not C-contiguous), allocates the
outputs and keeps for the backward pass only what it reads.
"""

import functools
import math

import numpy as np

from .._dispatch import register
from .._kernels import activation as kernels


def _supports(act, **_):
    # Activations the kernels do not know (user ones, id -1) run on the generic path.
    return 0 <= act.id < kernels.N_ACTIVATIONS


def _param(act):
    return act.params[0] if act.params else 0.0


def _ncs(x, bias):
    """``x`` as a C-contiguous ``(N, C, S)`` array; without bias the layout is free."""
    x = np.ascontiguousarray(x)
    if bias is None:
        return x.reshape(1, x.size, 1)
    if x.ndim == 1:
        return x.reshape(1, -1, 1)
    return x.reshape(x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _run(act, x, bias, inplace):
    """Run the forward kernel; return its ``(x3, bias, y3)`` arrays."""
    x3 = _ncs(x, bias)
    if bias is not None:
        bias = np.ascontiguousarray(bias)
    # x3 is a view of x exactly when x is C-contiguous
    reuse = inplace and x.flags.c_contiguous and x.flags.writeable
    y3 = x3 if reuse else np.empty_like(x3)
    kernels.forward(act.id, _param(act), x3, bias, y3)
    return x3, bias, y3


def forward(act, x, bias=None, *, inplace):
    return _run(act, x, bias, inplace)[2].reshape(x.shape)


def vjp(act, x, bias=None, *, inplace):
    """``(y, pullback)``; the pullback keeps ``y`` alone for output-only activations."""
    # x may be overwritten only when the backward pass does not read it
    x3, bias, y3 = _run(act, x, bias, inplace and act.output_only)
    shape, wants_db = x.shape, bias is not None
    src, bias = (y3, None) if act.output_only else (x3, bias)

    def pullback(dy):
        dy3 = np.ascontiguousarray(dy).reshape(src.shape)
        dx = np.empty_like(dy3)
        db = np.empty(src.shape[1], dy3.dtype) if wants_db else None
        kernels.backward(act.id, _param(act), src, bias, dy3, dx, db)
        return {"x": dx.reshape(shape), "bias": db}

    return y3.reshape(shape), pullback


for _op in ("fast_activation", "bias_activation"):
    for _inplace, _name in ((False, _op), (True, _op + "_")):
        register(
            _name,
            "looped",
            forward=functools.partial(forward, inplace=_inplace),
            vjp=functools.partial(vjp, inplace=_inplace),
            supports=_supports,
        )
