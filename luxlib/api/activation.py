"""``fast_activation`` and ``fast_activation_``."""

from .._autodiff import public_op
from .._dispatch import run
from .._validation import check_act, check_array


def _check(fname, act, x):
    return check_act(fname, act), check_array(fname, "x", x)


@public_op
def fast_activation(act, x):
    """Apply an activation elementwise: ``act(x)``.

    Parameters
    ----------
    act : Activation, str, callable or None
        The activation (``None`` is identity); see :mod:`luxlib.activations`.
    x : array
        Floating array of any shape.

    Returns
    -------
    y : array
        ``act(x)``, same shape and dtype as ``x``; ``x`` is not modified.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> luxlib.fast_activation("relu", np.array([-1.0, 0.5]))
    array([0. , 0.5])
    """
    act, x = _check("fast_activation", act, x)
    return run("fast_activation", (x,), act=act, x=x)


@public_op
def fast_activation_(act, x):
    """Like :func:`fast_activation`, but may overwrite ``x`` with the result.

    Parameters
    ----------
    act : Activation, str, callable or None
    x : array

    Returns
    -------
    y : array
        ``act(x)``; may be ``x`` itself, so use the returned value.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> luxlib.fast_activation_("relu", np.array([-1.0, 0.5]))
    array([0. , 0.5])
    """
    act, x = _check("fast_activation_", act, x)
    return run("fast_activation_", (x,), act=act, x=x)
