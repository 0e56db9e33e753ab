"""GPU ``fused_dense_bias_activation``: gemm through the array namespace's ``matmul``
(cuBLAS on CuPy), written into the output, then the bias+activation kernel of
``bias_activation.cu`` as the fused epilogue, in place.

Launch code against a kernel module (``mod``, see :mod:`luxlib.cuda._bias_activation`);
the arrays' own namespace does the products, so the CPU emulation runs it on NumPy.
The pullback keeps ``y`` for output-only activations, else the pre-activation ``x @ W.T``
(the bias is added again in the backward kernel), plus ``weight`` and ``x``.
"""

from .._validation import array_namespace
from . import _bias_activation


def supports(act, weight, x, bias):
    return _bias_activation.supports(act, x, bias) and weight.dtype == x.dtype


def _linear(weight, x):
    """``x @ weight.T`` as a new C-contiguous ``(batch, out)`` array (x as a batch)."""
    xp = array_namespace(weight, x)
    xb = x if x.ndim == 2 else x[None, :]
    z = xp.empty((xb.shape[0], weight.shape[0]), x.dtype)
    xp.matmul(xb, weight.T, out=z)
    return z


def forward(mod, act, weight, x, bias):
    z = _linear(weight, x)
    y = _bias_activation.forward(mod, act, z, bias, out=z)
    return y if x.ndim == 2 else y[0]


def vjp(mod, act, weight, x, bias):
    """``(y, pullback)``: ``dz = dy * act'`` and ``db`` in one kernel, then
    ``dweight = dz.T @ x`` and ``dx = dz @ weight``."""
    xp = array_namespace(weight, x)
    y, epilogue_pullback = _bias_activation.epilogue_vjp(mod, act, _linear(weight, x), bias)

    def pullback(dy):
        dy = xp.ascontiguousarray(dy).reshape(y.shape)
        dz, db = epilogue_pullback(dy)
        xb = x if x.ndim == 2 else x[None, :]
        dx = xp.matmul(dz, weight)
        return {"weight": xp.matmul(dz.T, xb), "x": dx if x.ndim == 2 else dx[0], "bias": db}

    return (y if x.ndim == 2 else y[0]), pullback
