"""``fused_dense_bias_activation``."""

from .._autodiff import public_op
from .._dispatch import run
from .._validation import check_act, check_array, check_shape, promote

_NAME = "fused_dense_bias_activation"


def _check(act, weight, x, bias):
    act = check_act(_NAME, act)
    weight = check_array(_NAME, "weight", weight, ndim=2)
    x = check_array(_NAME, "x", x, min_ndim=1)
    if x.ndim > 2:
        raise ValueError(f"{_NAME}: x must be (batch, in) or (in,), got shape {tuple(x.shape)}")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{_NAME}: x's last axis must have weight's in_features {weight.shape[1]}: "
            f"x has shape {tuple(x.shape)}, weight has shape {tuple(weight.shape)}"
        )
    bias = check_array(_NAME, "bias", bias, ndim=1, allow_none=True)
    check_shape(
        _NAME, "bias", bias, (weight.shape[0],), lambda: f"weight's out_features, weight has shape {tuple(weight.shape)}"
    )
    weight, x, bias = promote(weight, x, bias)
    return act, weight, x, bias


@public_op
def fused_dense_bias_activation(act, weight, x, bias):
    """Dense layer with fused bias and activation: ``act(x @ weight.T + bias)``.

    Parameters
    ----------
    act : Activation, str, callable or None
        The activation (``None`` is identity); see :mod:`luxlib.activations`.
    weight : array
        ``(out, in)``.
    x : array
        ``(batch, in)``, or ``(in,)`` for one sample.
    bias : array or None
        ``(out,)``.

    Returns
    -------
    y : array
        ``(batch, out)`` (``(out,)`` for a 1-D ``x``) in the promoted dtype of
        the inputs; an empty batch gives ``(0, out)``.

    Raises
    ------
    ValueError
        When the shapes do not fit (the message names both shapes).
    TypeError
        For non-floating arrays.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> w = np.array([[1.0, -1.0], [0.5, 0.5]])
    >>> luxlib.fused_dense_bias_activation("relu", w, np.array([[1.0, 2.0]]), np.array([0.0, 1.0]))
    array([[0. , 2.5]])
    >>> luxlib.fused_dense_bias_activation(None, w, np.array([1.0, 2.0]), None)
    array([-1. ,  1.5])
    """
    act, weight, x, bias = _check(act, weight, x, bias)
    return run(_NAME, (weight, x, bias), act=act, weight=weight, x=x, bias=bias)
