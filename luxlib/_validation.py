"""Argument checks shared by the public functions (run once, before any kernel)."""

import operator
import os
import sys
import warnings

import numpy as np

__all__ = [
    "array_namespace",
    "check_act",
    "check_array",
    "check_shape",
    "integer_in",
    "promote",
    "resolve_epsilon",
    "resolve_training",
]


def array_namespace(*arrays):
    """Return the array namespace (``numpy``, ``cupy``, ...) of the given arrays."""
    for x in arrays:
        if x is None or type(x) is np.ndarray:
            continue
        if _is_cupy(x):
            import cupy  # the caller already has it, so this costs nothing

            return cupy
        if hasattr(x, "__array_namespace__"):
            return x.__array_namespace__()
    return np


def _is_float_dtype(dtype):
    if isinstance(dtype, np.dtype):  # fast path (np.issubdtype costs ~1 us a call)
        return dtype.kind == "f"
    try:
        return np.issubdtype(np.dtype(dtype), np.floating)
    except TypeError:  # dtypes NumPy does not know (e.g. an array library's bfloat16)
        return "float" in str(dtype)


def check_array(fname, argname, x, *, ndim=None, min_ndim=None, allow_none=False):
    """Check that ``x`` is a floating array, turning array-likes into NumPy arrays.

    Raises ``TypeError`` for non-floating input or a ``numpy.matrix`` and ``ValueError``
    for a wrong rank, all naming the function and the argument.
    """
    if x is None:
        if allow_none:
            return None
        raise TypeError(f"{fname}: {argname} must be an array, got None")
    if isinstance(x, np.matrix):  # its * is a matrix product: the generic path would be wrong
        raise TypeError(f"{fname}: {argname} must not be a numpy.matrix; pass numpy.asarray({argname})")
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        try:
            x = np.asarray(x)
        except Exception as exc:
            raise TypeError(f"{fname}: {argname} must be an array, got {type(x).__name__}") from exc
        if x.dtype.kind in "iub":
            x = x.astype(np.float64)
    if not _is_float_dtype(x.dtype):
        raise TypeError(f"{fname}: {argname} must have a floating dtype, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{fname}: {argname} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(
            f"{fname}: {argname} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}"
        )
    return x


def integer_in(value, lo, hi):
    """``value`` as an ``int`` when it is an integer (any integer type, not a bool) with
    ``lo <= value < hi``; else ``None``."""
    if isinstance(value, bool):
        return None
    try:
        value = operator.index(value)
    except TypeError:
        return None
    return value if lo <= value < hi else None


def check_act(fname, act):
    """``activations.get(act)``, its errors prefixed with the function and argument."""
    try:
        return activations.get(act)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{fname}: act: {exc}") from None


def check_shape(fname, argname, x, expected, what=""):
    """Raise ``ValueError`` unless ``x.shape == expected`` (``x`` may be ``None``).

    ``what`` explains ``expected`` in the message: a string, or a function that returns
    it (built only for the error: the checks run on every call).
    """
    if x is not None and tuple(x.shape) != tuple(expected):
        what = what() if callable(what) else what
        extra = f" ({what})" if what else ""
        raise ValueError(
            f"{fname}: {argname} must have shape {tuple(expected)}{extra}, got {tuple(x.shape)}"
        )


def _is_cupy(x):
    # never imports CuPy: an array whose type lives in cupy means the caller has it
    return type(x).__module__.split(".")[0] == "cupy"


def _caller_stacklevel():
    """``stacklevel`` for a warning raised by this module's caller that names the first
    frame outside the luxlib package (the user's call)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(2), 2  # level 2: the caller of this function's caller
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def promote(*arrays):
    """Cast the arrays (``None`` passes through) to their common floating dtype."""
    present = [a for a in arrays if a is not None]
    if not present:
        return arrays
    first = present[0].dtype
    if all(a.dtype == first for a in present):  # the common case: nothing to do
        return arrays
    xp = array_namespace(*present)
    dtype = present[0].dtype
    for a in present[1:]:
        dtype = xp.result_type(dtype, a.dtype)
    if any(_is_cupy(a) for a in present) and any(a.dtype != dtype for a in present):
        # SPEC: on the GPU mixed dtypes also warn (the cast is a device copy per call)
        warnings.warn(
            f"luxlib: arrays of dtypes {sorted({str(a.dtype) for a in present})} are promoted to {dtype} "
            "(a cast copy on the GPU); pass arrays of one dtype to avoid it",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )
    return tuple(a if a is None or a.dtype == dtype else a.astype(dtype) for a in arrays)


def resolve_epsilon(epsilon, dtype):
    """``epsilon=None`` means ``eps(dtype) ** (5/7)``, as in LuxLib."""
    if epsilon is None:
        return float(np.finfo(np.dtype(dtype)).eps) ** (5 / 7)
    epsilon = float(epsilon)
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be a non-negative number, got {epsilon}")
    return epsilon


def resolve_training(fname, training):
    """``training=None`` means "inside :func:`luxlib.vjp`"."""
    if training is None:
        from ._autodiff import within_gradient

        return within_gradient()
    if training is True or training is False or isinstance(training, np.bool_):
        return bool(training)
    raise TypeError(f"{fname}: training must be True, False or None, got {training!r}")


# last, and not inside check_act (an import statement there cost ~0.4 us a call):
# activations imports this module
from . import activations  # noqa: E402
