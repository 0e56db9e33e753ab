"""Generic batchnorm, groupnorm, instancenorm and layernorm, with closed-form reverse rules.

All four normalize ``x`` over reduction ``axes`` with statistics from the batch or
given (running statistics), then scale, shift and activate:

    xhat = (x - mean) * rstd,   rstd = 1 / sqrt(var + epsilon),   y = act(xhat * scale + bias)

With ``g = dy * act'`` and ``h = g * scale`` (means over ``axes``):

    batch statistics:  dx = rstd * (h - mean(h) - xhat * mean(h * xhat))
    given statistics:  dx = rstd * h
    dscale = sum(g * xhat), dbias = sum(g) over the axes scale/bias broadcast along.

Statistics are the mean and the biased variance, two-pass (``mean((x - mean)**2)``),
in the input dtype (NumPy's ``mean`` sums pairwise; float16 accumulates in float32).
Gradients come back in the working shapes (grouped for groupnorm, broadcast for
scale/bias): ``luxlib.vjp`` reshapes each to its argument's shape.
"""

import math
from functools import partial

from .._dispatch import register
from .._validation import array_namespace
from .activation import activation_vjp, bias_shape
from .sums import fsum


def _mean(xp, a, axes):
    """Mean over ``axes``, kept as length-1 axes; 0 over empty axes (only empty outputs use it)."""
    if math.prod(a.shape[i] for i in axes) == 0:
        return xp.zeros(tuple(1 if i in axes else n for i, n in enumerate(a.shape)), dtype=a.dtype)
    return xp.mean(a, axis=axes, keepdims=True)


def moments(x, axes):
    """Mean and biased variance of ``x`` over ``axes`` (kept as length-1 axes), two-pass."""
    xp = array_namespace(x)
    mean = _mean(xp, x, axes)
    d = x - mean
    return mean, _mean(xp, d * d, axes)


def _sum_to(a, shape):
    """Sum ``a`` over the axes along which an array of ``shape`` was broadcast to it."""
    lead = a.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1)
    return fsum(a, axis=axes, keepdims=True).reshape(shape)


def _affine(xhat, scale, bias):
    z = xhat if scale is None else xhat * scale
    return z if bias is None else z + bias


def _xhat(x, mean, var, epsilon):
    rstd = 1 / array_namespace(x).sqrt(var + epsilon)
    return (x - mean) * rstd, rstd


def _normalize(act, x, mean, var, scale, bias, epsilon):
    return act(_affine(_xhat(x, mean, var, epsilon)[0], scale, bias))


def _normalize_vjp(act, x, mean, var, scale, bias, epsilon, axes):
    """``_normalize`` and its pullback; ``axes=None`` when the statistics do not depend on ``x``."""
    xp = array_namespace(x)
    xhat, rstd = _xhat(x, mean, var, epsilon)
    y, dz = activation_vjp(act, _affine(xhat, scale, bias))
    bias_shape_ = None if bias is None else bias.shape

    def pullback(dy):
        g = dz(dy)
        h = g if scale is None else g * scale
        if axes is not None:
            h = h - _mean(xp, h, axes) - xhat * _mean(xp, h * xhat, axes)
        return {
            "x": h * rstd,
            "scale": None if scale is None else _sum_to(g * xhat, scale.shape),
            "bias": None if bias_shape_ is None else _sum_to(g, bias_shape_),
        }

    return y, pullback


# batchnorm and instancenorm: per-channel affine, optional running statistics


def _batch_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _spatial_axes(x):
    return tuple(range(2, x.ndim))


def _per_channel(x, v):
    return None if v is None else v.reshape(bias_shape(x))


def _updated(x, axes, mean, var, running_mean, running_var, momentum):
    """New running statistics from the batch ones (per-sample ones averaged over the batch)."""
    if x.size == 0:  # an empty batch has no statistics: keep the old ones (as PyTorch does)
        return running_mean.copy(), running_var.copy()
    xp = array_namespace(x)
    n = math.prod(x.shape[i] for i in axes)  # > 1, checked by the public function
    mean = xp.mean(mean, axis=0).reshape(-1)
    var = xp.mean(var, axis=0).reshape(-1)
    return (
        (1 - momentum) * running_mean + momentum * mean,
        (1 - momentum) * running_var + (momentum * n / (n - 1)) * var,
    )


def _statistics(x, axes, running_mean, running_var, training, momentum):
    """``(mean, var, batch_axes, stats)``: what to normalize with, and the returned running stats.

    ``batch_axes`` is ``axes`` when the statistics come from ``x`` and ``None`` when
    they are the running ones.
    """
    if running_mean is not None and not training:
        shape = bias_shape(x)
        return running_mean.reshape(shape), running_var.reshape(shape), None, (running_mean, running_var)
    mean, var = moments(x, axes)
    stats = None if running_mean is None else _updated(x, axes, mean, var, running_mean, running_var, momentum)
    return mean, var, axes, stats


def running_norm_forward(axes_of, act, x, scale, bias, running_mean, running_var, training, momentum, epsilon):
    mean, var, _, stats = _statistics(x, axes_of(x), running_mean, running_var, training, momentum)
    return _normalize(act, x, mean, var, _per_channel(x, scale), _per_channel(x, bias), epsilon), stats


def running_norm_vjp(axes_of, act, x, scale, bias, running_mean, running_var, training, momentum, epsilon):
    mean, var, axes, stats = _statistics(x, axes_of(x), running_mean, running_var, training, momentum)
    y, pullback = _normalize_vjp(act, x, mean, var, _per_channel(x, scale), _per_channel(x, bias), epsilon, axes)
    return (y, stats), pullback


# groupnorm: x viewed as (N, groups, C / groups, *spatial), statistics over axes 2..


def _grouped(x, scale, bias, groups):
    """``x`` and scale/bias in the grouped working shape, and the reduction axes."""
    n, c = x.shape[:2]
    xg = x.reshape((n, groups, c // groups) + tuple(x.shape[2:]))
    affine = (1, groups, c // groups) + (1,) * (x.ndim - 2)
    scale = None if scale is None else scale.reshape(affine)
    bias = None if bias is None else bias.reshape(affine)
    return xg, scale, bias, tuple(range(2, xg.ndim))


def groupnorm_forward(act, x, scale, bias, groups, epsilon):
    xg, scale, bias, axes = _grouped(x, scale, bias, groups)
    return _normalize(act, xg, *moments(xg, axes), scale, bias, epsilon).reshape(x.shape)


def groupnorm_vjp(act, x, scale, bias, groups, epsilon):
    xg, scale, bias, axes = _grouped(x, scale, bias, groups)
    y, pullback = _normalize_vjp(act, xg, *moments(xg, axes), scale, bias, epsilon, axes)
    shape = xg.shape  # not xg: a view that would keep x alive
    return y.reshape(x.shape), lambda dy: pullback(dy.reshape(shape))


# layernorm: scale/bias broadcast against x, statistics over the given axes


def layernorm_forward(act, x, scale, bias, axes, epsilon):
    return _normalize(act, x, *moments(x, axes), scale, bias, epsilon)


def layernorm_vjp(act, x, scale, bias, axes, epsilon):
    return _normalize_vjp(act, x, *moments(x, axes), scale, bias, epsilon, axes)


register(
    "batchnorm",
    "generic",
    forward=partial(running_norm_forward, _batch_axes),
    vjp=partial(running_norm_vjp, _batch_axes),
)
register(
    "instancenorm",
    "generic",
    forward=partial(running_norm_forward, _spatial_axes),
    vjp=partial(running_norm_vjp, _spatial_axes),
)
register("groupnorm", "generic", forward=groupnorm_forward, vjp=groupnorm_vjp)
register("layernorm", "generic", forward=layernorm_forward, vjp=layernorm_vjp)
