"""GPU ``fused_dense_bias_activation``: cuBLAS gemm (:mod:`luxlib.cuda._blas`; ``weight.T``
and ``dz.T`` through the transpose flag, no views) written into the output, then the
bias+activation kernel of ``bias_activation.cu`` as the fused epilogue, in place.

Launch code against a kernel module (``mod``, see :mod:`luxlib.cuda._bias_activation`)
and a ``blas`` object (:func:`luxlib.cuda._blas.get_blas`); the CPU emulation passes
emulated ones over NumPy arrays.
The pullback keeps ``y`` for output-only activations, else the pre-activation ``x @ W.T``
(the bias is added again in the backward kernel), plus ``weight`` and ``x``.
"""

from .._validation import array_namespace
from . import _bias_activation
from ._blas import matmul


def supports(act, weight, x, bias):
    return _bias_activation.supports(act, x, bias) and weight.dtype == x.dtype


def _linear(blas, weight, x):
    """``x @ weight.T`` as a new C-contiguous ``(batch, out)`` array (x as a batch)."""
    return matmul(blas, x if x.ndim == 2 else x[None, :], weight, transpose_b=True)


def forward(mod, blas, act, weight, x, bias):
    y = _bias_activation.epilogue(mod, act, _linear(blas, weight, x), bias)
    return y if x.ndim == 2 else y[0]


def vjp(mod, blas, act, weight, x, bias):
    """``(y, pullback)``: ``dz = dy * act'`` and ``db`` in one kernel, then
    ``dweight = dz.T @ x`` and ``dx = dz @ weight``."""
    xp = array_namespace(weight, x)
    y, epilogue_pullback = _bias_activation.epilogue_vjp(mod, act, _linear(blas, weight, x), bias)

    def pullback(dy):
        dy = xp.ascontiguousarray(dy).reshape(y.shape)
        dz, db = epilogue_pullback(dy)
        xb = x if x.ndim == 2 else x[None, :]
        dx = matmul(blas, dz, weight)
        return {"weight": matmul(blas, dz, xb, transpose_a=True), "x": dx if x.ndim == 2 else dx[0], "bias": db}

    return (y if x.ndim == 2 else y[0]), pullback
