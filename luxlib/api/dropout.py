"""``dropout`` and ``alpha_dropout``.

Masks come from the counter-based Philox4x32-10 generator keyed by one draw from
a copy of ``rng``, so every backend and thread count gives the same mask; the
contract is in ``doc/dropout.md``.
"""

import math
import numbers
import operator

import numpy as np

from .._autodiff import public_op
from .._dispatch import run
from .._generic.philox import is_generator
from .._validation import check_array, check_shape, promote, resolve_training

#: SELU's saturation value ``-lambda * alpha``, alpha_dropout's default ``alpha``
ALPHA_DROPOUT_ALPHA = -1.7580993408473766


def _check_rng(fname, rng):
    if not is_generator(rng):
        raise TypeError(
            f"{fname}: rng must be a numpy.random.Generator or a cupy.random.Generator, got {type(rng).__name__}"
        )


def _check_real(fname, argname, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {argname} must be a real number, got {value!r}")
    return float(value)


def _check_p(fname, p):
    p = _check_real(fname, "p", p)
    if not 0 <= p <= 1:
        raise ValueError(f"{fname}: p must lie in [0, 1], got {p}")
    return p


def _mask_shape(fname, x, dims):
    """Shape of the mask: ``x``'s length on the axes in ``dims``, 1 on the others."""
    if dims is None:
        return tuple(x.shape)
    items = dims if isinstance(dims, (tuple, list)) else (dims,)
    try:
        if any(isinstance(d, bool) for d in items):  # an int to operator.index, not an axis
            raise TypeError
        items = [operator.index(d) for d in items]
    except TypeError as exc:
        raise TypeError(f"{fname}: dims must be None, an int or a tuple of ints, got {dims!r}") from exc
    if any(not -x.ndim <= a < x.ndim for a in items):
        raise ValueError(f"{fname}: dims {dims!r} are not axes of x, which has shape {tuple(x.shape)}")
    axes = {a % x.ndim for a in items}
    if len(axes) != len(items):
        raise ValueError(f"{fname}: dims {dims!r} repeat an axis of x, which has shape {tuple(x.shape)}")
    return tuple(n if i in axes else 1 for i, n in enumerate(x.shape))


@public_op
def dropout(rng, x, p, training, invp=None, dims=None, *, mask=None, update_mask=True):
    """Randomly zero elements of ``x`` and scale the rest: ``y = x * mask``.

    ``mask = where(u > p, invp, 0)`` for ``u`` uniform in ``[0, 1)`` from the
    Philox4x32-10 stream keyed by one draw from a copy of ``rng``. The caller's
    ``rng`` is not advanced: the copy is returned, so repeating a call with the
    same ``rng`` repeats the mask (on every backend, for any thread count).

    Parameters
    ----------
    rng : numpy.random.Generator or cupy.random.Generator
    x : array
    p : float
        Drop probability, in ``[0, 1]``.
    training : bool or None
        ``False`` returns ``(x, x, rng)``; ``None`` means "inside :func:`luxlib.vjp`".
    invp : float, optional
        Scale of the kept elements; default ``1 / (1 - p)``.
    dims : int or tuple of int, optional
        Axes along which the mask varies (negative axes allowed); the mask has
        length 1 on the other axes and broadcasts there. ``None``: all axes.
    mask : array, optional
        A mask to reuse when ``update_mask`` is false; it must have the shape a
        fresh mask would have (``x``'s shape reduced by ``dims``). Ignored when
        ``update_mask`` is true.
    update_mask : bool, default True
        ``False`` computes ``y = x * mask`` with the given ``mask`` and returns
        ``rng`` unchanged.

    Returns
    -------
    y : array
        ``x * mask``, in the promoted dtype of ``x`` (and a reused ``mask``).
    mask : array
        The mask, in ``y``'s dtype; when not training, ``x`` itself (LuxLib's
        convention).
    rng : numpy.random.Generator or cupy.random.Generator
        The advanced copy of ``rng`` when a mask was drawn, else ``rng``.

    Raises
    ------
    TypeError
        For a non-Generator ``rng``, non-floating arrays, non-numeric ``p``/``invp``,
        non-integer ``dims``.
    ValueError
        For ``p`` outside ``[0, 1]``, ``dims`` that are not distinct axes of ``x``,
        a reused ``mask`` of the wrong shape, or ``update_mask=False`` without ``mask``.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> rng = np.random.default_rng(0)
    >>> y, mask, rng2 = luxlib.dropout(rng, np.ones((2, 3)), 0.5, True, dims=0)
    >>> mask.shape
    (2, 1)
    >>> bool(np.all((mask == 0) | (mask == 2)))
    True
    >>> luxlib.dropout(rng, np.ones((2, 3)), 0.5, True, dims=0)[1].tolist() == mask.tolist()
    True
    """
    fname = "dropout"
    _check_rng(fname, rng)
    x = check_array(fname, "x", x)
    p = _check_p(fname, p)
    invp = _check_real(fname, "invp", invp, allow_none=True)
    if invp is None:
        invp = 1 / (1 - p) if p < 1 else math.inf  # with p = 1 nothing is kept anyway
    shape = _mask_shape(fname, x, dims)
    if update_mask is not True and update_mask is not False and not isinstance(update_mask, np.bool_):
        raise TypeError(f"{fname}: update_mask must be True or False, got {update_mask!r}")
    mask = check_array(fname, "mask", mask, allow_none=True)
    if update_mask:
        mask = None
    elif mask is None:
        raise ValueError(f"{fname}: update_mask=False needs the mask to reuse, got mask=None")
    else:
        check_shape(fname, "mask", mask, shape, lambda: f"x has shape {tuple(x.shape)}, dims={dims!r}")
    training = resolve_training(fname, training)
    if training and mask is not None:
        x, mask = promote(x, mask)
    return run(
        "dropout", (x, mask), rng=rng, x=x, p=p, training=training, invp=invp, shape=shape, mask=mask
    )


@public_op
def alpha_dropout(rng, x, p, training, alpha=None, A=None, B=None):
    """Dropout that keeps SELU's self-normalization: ``y = where(u > p, x, alpha) * A + B``.

    With the defaults, a standard normal ``x`` gives a ``y`` of mean 0 and
    variance 1. ``u`` comes from the same generator and stream as :func:`dropout`'s
    (caller's ``rng`` not advanced, its advanced copy returned).

    Parameters
    ----------
    rng : numpy.random.Generator or cupy.random.Generator
    x : array
    p : float
        Drop probability, in ``[0, 1]``.
    training : bool or None
        ``False`` returns ``(x, rng)``; ``None`` means "inside :func:`luxlib.vjp`".
    alpha : float, optional
        Value of the dropped elements before the affine map; default
        ``-1.7580993408473766``.
    A : float, optional
        Default ``1 / sqrt((1 - p) * (1 + p * alpha**2))`` (with the ``alpha`` used);
        0 for ``p = 1``, the limit, so that ``y`` is 0 there.
    B : float, optional
        Default ``-A * alpha * p``.

    Returns
    -------
    y : array
        In ``x``'s dtype; ``x`` itself when not training.
    rng : numpy.random.Generator or cupy.random.Generator
        The advanced copy of ``rng`` when training, else ``rng``.

    Raises
    ------
    TypeError
        For a non-Generator ``rng``, non-floating ``x`` or non-numeric constants.
    ValueError
        For ``p`` outside ``[0, 1]``.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> x = np.random.default_rng(1).standard_normal(100_000)
    >>> y, _ = luxlib.alpha_dropout(np.random.default_rng(0), x, 0.2, True)
    >>> bool(abs(y.mean()) < 0.02 and abs(y.std() - 1) < 0.02)
    True
    """
    fname = "alpha_dropout"
    _check_rng(fname, rng)
    x = check_array(fname, "x", x)
    p = _check_p(fname, p)
    alpha = _check_real(fname, "alpha", alpha, allow_none=True)
    A = _check_real(fname, "A", A, allow_none=True)
    B = _check_real(fname, "B", B, allow_none=True)
    if alpha is None:
        alpha = ALPHA_DROPOUT_ALPHA
    if A is None:
        A = 1 / math.sqrt((1 - p) * (1 + p * alpha**2)) if p < 1 else 0.0
    if B is None:
        B = -A * alpha * p
    training = resolve_training(fname, training)
    return run("alpha_dropout", (x,), rng=rng, x=x, p=p, training=training, alpha=alpha, A=A, B=B)
