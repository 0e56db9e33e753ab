"""``batchnorm``, ``groupnorm``, ``instancenorm`` and ``layernorm``.

The choices SPEC leaves open (empty batches, one value per channel, 1-D ``x`` in
``layernorm``, ...) are written down in ``doc/normalization.md``.
"""

import math
import numbers
import operator
from collections import namedtuple

from .._autodiff import public_op
from .._dispatch import run
from .._validation import check_act, check_array, check_shape, promote, resolve_epsilon, resolve_training

__all__ = ["NormStats", "batchnorm", "groupnorm", "instancenorm", "layernorm"]

NormStats = namedtuple("NormStats", "running_mean running_var")
NormStats.__doc__ = """Running statistics returned by :func:`batchnorm` and :func:`instancenorm`."""


class _AllButBatch:
    """``layernorm``'s default ``dims``: every axis but 0 (axis 0 of a 1-D ``x``)."""

    def __repr__(self):
        return "<all axes but 0>"


ALL_BUT_BATCH = _AllButBatch()


def _real(fname, argname, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fname}: {argname} must be a real number, got {value!r}")
    return float(value)


def _epsilon(fname, epsilon, dtype):
    if epsilon is not None:
        _real(fname, "epsilon", epsilon)
    try:
        return resolve_epsilon(epsilon, dtype)
    except ValueError as exc:
        raise ValueError(f"{fname}: {exc}") from None


def _momentum(fname, momentum):
    momentum = _real(fname, "momentum", momentum)
    if not 0 <= momentum <= 1:
        raise ValueError(f"{fname}: momentum must lie in [0, 1], got {momentum}")
    return momentum


def _channel_vectors(fname, x, **vectors):
    """Check the ``(C,)`` per-channel arrays (``None`` allowed); return them in order."""
    out = []
    for name, v in vectors.items():
        v = check_array(fname, name, v, ndim=1, allow_none=True)
        check_shape(fname, name, v, (x.shape[1],), lambda: f"the length of x's channel axis, x has shape {tuple(x.shape)}")
        out.append(v)
    return out


def _check_running(fname, x, running_mean, running_var, training, per_channel):
    """Both running statistics or neither; an update needs more than one value per channel."""
    if (running_mean is None) != (running_var is None):
        given = "running_mean" if running_var is None else "running_var"
        raise ValueError(f"{fname}: running_mean and running_var must be given together, got only {given}")
    if training and running_mean is not None and per_channel == 1 and x.size:
        raise ValueError(
            f"{fname}: updating running_var needs more than 1 value per channel "
            f"(the unbiased variance of one value is undefined), x has shape {tuple(x.shape)}"
        )


def _stats(stats):
    return None if stats is None else NormStats(*stats)


def _with_running_stats(fname, x, scale, bias, running_mean, running_var, training, act, momentum, epsilon,
                        min_ndim):
    """Validate and run batchnorm or instancenorm (same arguments, different statistics axes)."""
    act = check_act(fname, act)
    training = resolve_training(fname, training)
    x = check_array(fname, "x", x, min_ndim=min_ndim)
    scale, bias, running_mean, running_var = _channel_vectors(
        fname, x, scale=scale, bias=bias, running_mean=running_mean, running_var=running_var
    )
    # values per running-statistics entry: batchnorm pools the batch, instancenorm does not
    per_entry = math.prod((x.shape[0] if fname == "batchnorm" else 1,) + x.shape[2:])
    _check_running(fname, x, running_mean, running_var, training, per_entry)
    momentum = _momentum(fname, momentum)
    x, scale, bias, running_mean, running_var = promote(x, scale, bias, running_mean, running_var)
    epsilon = _epsilon(fname, epsilon, x.dtype)
    y, stats = run(
        fname,
        (x, scale, bias, running_mean, running_var),
        act=act,
        x=x,
        scale=scale,
        bias=bias,
        running_mean=running_mean,
        running_var=running_var,
        training=training,
        momentum=momentum,
        epsilon=epsilon,
    )
    return y, _stats(stats)


@public_op
def batchnorm(x, scale, bias, running_mean, running_var, training, act=None, momentum=0.1, epsilon=None):
    """Batch normalization: statistics per channel over the batch and spatial axes.

    ``y = act((x - mean) / sqrt(var + epsilon) * scale + bias)`` with the mean and
    the biased variance over every axis but 1 (training, or no running statistics),
    or the running statistics (inference).

    Parameters
    ----------
    x : array
        ``(N, C, *spatial)`` or ``(N, C)``.
    scale, bias : array or None
        ``(C,)``.
    running_mean, running_var : array or None
        ``(C,)``, both given or both ``None``. Never modified.
    training : bool or None
        ``None`` means "inside :func:`luxlib.vjp`".
    act : Activation, str, callable or None
        Applied last, fused (``None`` is identity).
    momentum : float, default 0.1
        In ``[0, 1]``: ``rm' = (1 - momentum) rm + momentum mean``.
    epsilon : float, optional
        Default ``eps(dtype) ** (5/7)``.

    Returns
    -------
    y : array
        Same shape as ``x``, in the promoted dtype of the array inputs.
    stats : NormStats or None
        Training with running statistics: new arrays ``rm' = (1-m) rm + m mean``,
        ``rv' = (1-m) rv + m n/(n-1) var`` (``n`` elements per channel; an empty
        ``x`` returns copies of the old ones). Inference: the running statistics
        unchanged. ``None`` when no running statistics were given.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])
    >>> y, stats = luxlib.batchnorm(x, None, None, np.zeros(2), np.ones(2), True, epsilon=0)
    >>> y
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> stats.running_mean, stats.running_var
    (array([0.2, 2. ]), array([ 1.1, 20.9]))
    """
    return _with_running_stats(
        "batchnorm", x, scale, bias, running_mean, running_var, training, act, momentum, epsilon, min_ndim=2
    )


@public_op
def groupnorm(x, scale, bias, groups, act=None, epsilon=None):
    """Group normalization: statistics per sample per group of ``C / groups`` channels.

    Channels ``[k C/groups, (k+1) C/groups)`` form group ``k``; the mean and the
    biased variance run over the group's channels and the spatial axes.

    Parameters
    ----------
    x : array
        ``(N, C, *spatial)`` or ``(N, C)``.
    scale, bias : array or None
        ``(C,)``.
    groups : int
        A positive divisor of ``C``.
    act : Activation, str, callable or None
        Applied last, fused (``None`` is identity).
    epsilon : float, optional
        Default ``eps(dtype) ** (5/7)``.

    Returns
    -------
    y : array
        ``act((x - mean) / sqrt(var + epsilon) * scale + bias)``, same shape as ``x``.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> luxlib.groupnorm(np.array([[1.0, 3.0, 4.0, 8.0]]), None, None, 2, epsilon=0)
    array([[-1.,  1., -1.,  1.]])
    """
    fname = "groupnorm"
    act = check_act(fname, act)
    x = check_array(fname, "x", x, min_ndim=2)
    scale, bias = _channel_vectors(fname, x, scale=scale, bias=bias)
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise TypeError(f"{fname}: groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups <= 0 or x.shape[1] % groups:
        raise ValueError(
            f"{fname}: groups ({groups}) must be a positive divisor of the number of channels "
            f"{x.shape[1]}, x has shape {tuple(x.shape)}"
        )
    x, scale, bias = promote(x, scale, bias)
    epsilon = _epsilon(fname, epsilon, x.dtype)
    return run("groupnorm", (x, scale, bias), act=act, x=x, scale=scale, bias=bias, groups=groups, epsilon=epsilon)


@public_op
def instancenorm(
    x, scale, bias, training, act=None, epsilon=None, *, running_mean=None, running_var=None, momentum=0.1
):
    """Instance normalization: statistics per sample per channel over the spatial axes.

    Parameters
    ----------
    x : array
        ``(N, C, *spatial)`` with at least one spatial axis.
    scale, bias : array or None
        ``(C,)``.
    training : bool or None
        ``None`` means "inside :func:`luxlib.vjp`". Inference with running
        statistics normalizes with them instead of the instance statistics.
    act : Activation, str, callable or None
        Applied last, fused (``None`` is identity).
    epsilon : float, optional
        Default ``eps(dtype) ** (5/7)``.
    running_mean, running_var : array or None
        ``(C,)``, both given or both ``None``. Never modified.
    momentum : float, default 0.1
        In ``[0, 1]``.

    Returns
    -------
    y : array
        Same shape as ``x``, in the promoted dtype of the array inputs.
    stats : NormStats or None
        As for :func:`batchnorm`, with the per-sample statistics averaged over the
        batch and ``n`` the spatial size.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> x = np.array([[[1.0, 3.0], [0.0, 4.0]]])
    >>> y, stats = luxlib.instancenorm(x, None, None, True, epsilon=0)
    >>> y
    array([[[-1.,  1.],
            [-1.,  1.]]])
    >>> stats is None
    True
    """
    return _with_running_stats(
        "instancenorm", x, scale, bias, running_mean, running_var, training, act, momentum, epsilon, min_ndim=3
    )


def _axes(fname, x, dims):
    """Normalize an explicit ``dims`` (int, tuple of ints or ``"all"``) to sorted axes."""
    if isinstance(dims, str):
        if dims != "all":
            raise ValueError(f"{fname}: dims must be a tuple of axes, 'all' or None, got {dims!r}")
        return tuple(range(x.ndim))
    items = tuple(dims) if isinstance(dims, (tuple, list, range)) else (dims,)
    try:
        axes = [operator.index(d) for d in items]
    except TypeError:
        raise TypeError(f"{fname}: dims must be a tuple of axes, 'all' or None, got {dims!r}") from None
    if any(not -x.ndim <= a < x.ndim for a in axes):
        raise ValueError(f"{fname}: dims {dims!r} are not axes of x, which has shape {tuple(x.shape)}")
    unique = sorted({a % x.ndim for a in axes})
    if len(unique) != len(axes):
        raise ValueError(f"{fname}: dims {dims!r} repeat an axis of x, which has shape {tuple(x.shape)}")
    return tuple(unique)


def _layernorm_axes(fname, x, scale, bias, dims):
    """Reduction axes; ``dims=None`` takes them from the rank of scale/bias (LuxLib, mirrored)."""
    if dims is ALL_BUT_BATCH:
        return tuple(range(1, x.ndim)) if x.ndim > 1 else (0,)
    if dims is not None:
        return _axes(fname, x, dims)
    if scale is None and bias is None:
        raise ValueError(f"{fname}: dims=None takes the axes from scale/bias, but both are None")
    if scale is not None and bias is not None and scale.ndim != bias.ndim:
        raise ValueError(
            f"{fname}: with dims=None scale and bias must have the same rank, "
            f"got shapes {tuple(scale.shape)} and {tuple(bias.shape)}"
        )
    rank = (scale if scale is not None else bias).ndim
    if x.ndim <= rank:
        raise ValueError(
            f"{fname}: with dims=None x must have more dimensions than scale/bias, "
            f"got x shape {tuple(x.shape)} and scale/bias rank {rank}"
        )
    return tuple(range(rank, x.ndim))


@public_op
def layernorm(x, scale, bias, act=None, dims=ALL_BUT_BATCH, epsilon=None):
    """Layer normalization: statistics over ``dims``, then an elementwise affine map.

    Parameters
    ----------
    x : array
        Any rank >= 1.
    scale, bias : array or None
        Broadcast against ``x`` with NumPy rules (trailing axes align); the result
        must have ``x``'s shape.
    act : Activation, str, callable or None
        Applied last, fused (``None`` is identity).
    dims : int, tuple of int, "all" or None, default all axes but 0
        Axes of the mean and the biased variance (negative axes allowed). A 1-D
        ``x`` is one sample, so its default is axis 0. ``None`` follows LuxLib,
        mirrored to row-major: with ``M`` the rank of scale/bias (which then align
        with the trailing ``M`` axes of ``x``), the statistics run over the
        trailing ``x.ndim - M`` axes.
    epsilon : float, optional
        Default ``eps(dtype) ** (5/7)``.

    Returns
    -------
    y : array
        ``act((x - mean) / sqrt(var + epsilon) * scale + bias)``, same shape as ``x``.

    Examples
    --------
    >>> import numpy as np, luxlib
    >>> luxlib.layernorm(np.array([[1.0, 3.0], [2.0, 6.0]]), None, np.array([0.0, 1.0]), epsilon=0)
    array([[-1.,  2.],
           [-1.,  2.]])
    """
    fname = "layernorm"
    act = check_act(fname, act)
    x = check_array(fname, "x", x, min_ndim=1)
    scale = check_array(fname, "scale", scale, allow_none=True)
    bias = check_array(fname, "bias", bias, allow_none=True)
    axes = _layernorm_axes(fname, x, scale, bias, dims)
    for name, v in (("scale", scale), ("bias", bias)):
        if v is not None and (v.ndim > x.ndim or any(s not in (1, n) for s, n in zip(v.shape[::-1], x.shape[::-1]))):
            raise ValueError(
                f"{fname}: {name} must broadcast to x's shape {tuple(x.shape)}, got {tuple(v.shape)}"
            )
    x, scale, bias = promote(x, scale, bias)
    epsilon = _epsilon(fname, epsilon, x.dtype)
    return run("layernorm", (x, scale, bias), act=act, x=x, scale=scale, bias=bias, axes=axes, epsilon=epsilon)
