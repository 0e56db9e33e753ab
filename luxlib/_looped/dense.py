"""Looped (BLAS from Cython) ``fused_dense_bias_activation``.

Glue around :mod:`luxlib._kernels.dense`: ``weight`` and ``x`` go to BLAS as they
are stored (transposed views through BLAS's transpose flag, see
:func:`luxlib._blas_layout.blas_operand`), the outputs are allocated here, and
the pullback keeps ``y`` for output-only activations, else the pre-activation ``z``
(plus ``weight`` and ``x``, which the gradients read).
"""

import contextlib

import numpy as np

from .._blas_layout import blas_operand
from .._dispatch import register
from .._kernels import dense as kernels
from .._threads import single_threaded_blas
from .activation import _param, _supports


def _blas_threads(batch, n_out):
    """Blocked shapes run one gemm per block inside the OpenMP region: BLAS at one thread."""
    return single_threaded_blas() if kernels.blocked(batch, n_out) else contextlib.nullcontext()


def _run(act, weight, x, bias, keep_z):
    """Forward kernel; returns ``(y, z, weight operand, x operand)`` with ``x`` as a batch.

    ``z`` is a separate array only when ``keep_z``, else ``y`` itself.
    """
    wo, xo = blas_operand(weight), blas_operand(x if x.ndim == 2 else x[None, :])
    if bias is not None:
        bias = np.ascontiguousarray(bias)
    y = np.empty((xo[0].shape[0], weight.shape[0]), np.result_type(weight, x))
    z = np.empty_like(y) if keep_z else y
    with _blas_threads(*y.shape):
        kernels.forward(act.id, _param(act), *xo, *wo, bias, z, y)
    return y, z, wo, xo


def forward(act, weight, x, bias):
    y = _run(act, weight, x, bias, keep_z=False)[0]
    return y if x.ndim == 2 else y[0]


def vjp(act, weight, x, bias):
    y, z, wo, xo = _run(act, weight, x, bias, keep_z=not act.output_only)
    src = y if act.output_only else z
    wants_db = bias is not None
    del z

    def pullback(dy):
        dy = np.ascontiguousarray(dy).reshape(src.shape)
        dz, dx = np.empty_like(dy), np.empty(xo[0].shape, dy.dtype)
        dw = np.empty(wo[0].shape, dy.dtype)
        db = np.empty(src.shape[1], dy.dtype) if wants_db else None
        with _blas_threads(*src.shape):
            kernels.backward(act.id, _param(act), src, dy, *xo, *wo, dz, dx, dw, db)
        return {"weight": dw, "x": dx, "bias": db}

    return (y if x.ndim == 2 else y[0]), pullback


register("fused_dense_bias_activation", "looped", forward=forward, vjp=vjp, supports=_supports)
