"""``bias_activation`` and ``bias_activation_``."""

from .._autodiff import public_op
from .._dispatch import run
from .._validation import check_act, check_array, check_shape, promote


def _check(fname, act, x, bias):
    act = check_act(fname, act)
    x = check_array(fname, "x", x)
    bias = check_array(fname, "bias", bias, allow_none=True)  # its shape, rank included, below
    if bias is not None:
        if x.ndim == 0:
            raise ValueError(f"{fname}: x must have at least 1 dimension when bias is given, got shape ()")
        channels = x.shape[0] if x.ndim == 1 else x.shape[1]
        check_shape(fname, "bias", bias, (channels,), lambda: f"the length of x's channel axis, x has shape {tuple(x.shape)}")
    x, bias = promote(x, bias)
    return act, x, bias


@public_op
def bias_activation(act, x, bias):
    """Add a per-channel bias and apply an activation: ``act(x + bias)``.

    Parameters
    ----------
    act : Activation, str, callable or None
        The activation (``None`` is identity).
    x : array
        ``(N, C, *spatial)`` or ``(N, C)``; a 1-D ``x`` of length ``C`` is one sample.
    bias : array or None
        ``(C,)``, added along axis 1 (along the only axis of a 1-D ``x``).

    Returns
    -------
    y : array
        ``act(x + bias)`` in the promoted dtype of ``x`` and ``bias``.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> luxlib.bias_activation("relu", np.array([[-1.0, 1.0]]), np.array([0.5, -2.0]))
    array([[0., 0.]])
    """
    act, x, bias = _check("bias_activation", act, x, bias)
    return run("bias_activation", (x, bias), act=act, x=x, bias=bias)


@public_op
def bias_activation_(act, x, bias):
    """Like :func:`bias_activation`, but may overwrite ``x`` with the result.

    Parameters
    ----------
    act : Activation, str, callable or None
    x : array
    bias : array or None

    Returns
    -------
    y : array
        ``act(x + bias)``; may be ``x`` itself, so use the returned value.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> luxlib.bias_activation_(None, np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    array([2., 3.])
    """
    act, x, bias = _check("bias_activation_", act, x, bias)
    return run("bias_activation_", (x, bias), act=act, x=x, bias=bias)
