"""Sums of the generic path: float16 adds up in float32 and is rounded once.

NumPy's ``sum`` adds float16 in float16, so a gradient summed over a long batch axis
stalls: past 2048 adding 1 rounds back to 2048. Its ``mean`` already uses float32 for
float16, as do the compiled kernels for every sum.
"""

from .._validation import array_namespace


def acc_dtype(xp, dtype):
    """The dtype sums run in: float32 for float16, else ``dtype``."""
    return xp.result_type(dtype, xp.float32)


def fsum(a, axis, keepdims=False):
    """``a`` summed over ``axis`` in ``acc_dtype``, returned in ``a``'s dtype."""
    xp = array_namespace(a)
    return xp.sum(a, axis=axis, keepdims=keepdims, dtype=acc_dtype(xp, a.dtype)).astype(a.dtype, copy=False)
