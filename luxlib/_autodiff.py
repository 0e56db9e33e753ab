"""Reverse mode: :func:`vjp` and :func:`within_gradient`.

``vjp(f, ...)`` calls the public function ``f`` with a capture slot set; the one
implementation call that ``f`` makes (:func:`luxlib._dispatch.run`) sees the slot,
runs its reverse rule instead of the plain forward and leaves its pullback there.
Nested luxlib calls made by that implementation see no slot.
"""

import contextvars
import inspect

from ._validation import array_namespace, check_array

__all__ = ["vjp", "within_gradient", "public_op"]

_CAPTURE = contextvars.ContextVar("luxlib_capture", default=None)
_IN_GRADIENT = contextvars.ContextVar("luxlib_in_gradient", default=False)


def public_op(f):
    """Mark a public function as differentiable by :func:`vjp`."""
    sig = inspect.signature(f)
    f.__luxlib_positional__ = tuple(
        name
        for name, p in sig.parameters.items()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
    return f


def take_capture():
    """Return the capture slot of the current vjp (once), or ``None``."""
    slot = _CAPTURE.get()
    if slot is not None:
        _CAPTURE.set(None)
    return slot


def within_gradient():
    """Return whether the current call runs inside the forward pass of :func:`vjp`.

    ``training=None`` arguments resolve to this value.

    Returns
    -------
    bool

    Examples
    --------
    >>> import luxlib
    >>> luxlib.within_gradient()
    False
    """
    return _IN_GRADIENT.get()


def _fit(grad, like):
    """Give ``grad`` the ``(shape, dtype)`` of the argument it belongs to (``like``)."""
    if grad is None or like is None:
        return grad
    shape, dtype = like
    if grad.shape != shape:
        grad = grad.reshape(shape)
    if grad.dtype != dtype:
        grad = grad.astype(dtype)
    return grad


def vjp(f, *args, **kwargs):
    """Run a luxlib function and return its output and its pullback.

    Parameters
    ----------
    f : callable
        One of luxlib's public functions (``fast_activation``, ``batchnorm``, ...).
    *args, **kwargs
        Its arguments.

    Returns
    -------
    out : object
        What ``f(*args, **kwargs)`` returns.
    pullback : callable
        ``pullback(dy)`` takes the cotangent of the primary output (``y``; for
        functions returning tuples, their first entry) and returns a tuple with one
        entry per positional argument: the gradient for differentiable arguments
        (``x``, ``weight``, ``bias``, ``scale``, ``y`` of ``batched_matmul``), in
        the argument's shape and dtype, and ``None`` for the others.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> y, pb = luxlib.vjp(luxlib.bias_activation, "relu", np.array([[-1.0, 2.0]]), np.array([0.5, 0.5]))
    >>> pb(np.ones_like(y))
    (None, array([[0., 1.]]), array([0., 1.]))
    """
    positional = getattr(f, "__luxlib_positional__", None)
    if positional is None:
        raise TypeError(f"vjp: f must be a luxlib function, got {f!r}")
    if len(args) > len(positional):
        raise TypeError(f"vjp: {f.__name__} takes {len(positional)} positional arguments, got {len(args)}")
    slot = []
    capture_token = _CAPTURE.set(slot)
    gradient_token = _IN_GRADIENT.set(True)
    try:
        out = f(*args, **kwargs)
    finally:
        _IN_GRADIENT.reset(gradient_token)
        _CAPTURE.reset(capture_token)
    (rule,) = slot
    y = out[0] if isinstance(out, tuple) else out
    names = positional[: len(args)]
    # Only shapes and dtypes are kept: holding the arrays themselves would keep inputs
    # alive that the rule let go (an output-only activation keeps nothing but y).
    y_shape, y_dtype, xp = tuple(y.shape), y.dtype, array_namespace(y)
    likes = [(tuple(a.shape), a.dtype) if hasattr(a, "shape") else None for a in args]

    def pullback(dy):
        dy = check_array(f"{f.__name__} pullback", "dy", dy)
        if tuple(dy.shape) != y_shape:
            raise ValueError(
                f"{f.__name__} pullback: dy must have the output's shape {y_shape}, got {tuple(dy.shape)}"
            )
        dy = xp.asarray(dy, dtype=y_dtype)
        grads = rule(dy)
        return tuple(_fit(grads.get(name), like) for name, like in zip(names, likes))

    return out, pullback
