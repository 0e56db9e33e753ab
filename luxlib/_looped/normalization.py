"""Looped (Cython/OpenMP) ``batchnorm``, ``groupnorm``, ``instancenorm`` and ``layernorm``.

Glue around :mod:`luxlib._kernels.normalization`: describes each op as groups of
contiguous runs (the kernel's geometry), copies ``x`` once when it is not
C-contiguous (layernorm: when its ``axes`` are not a trailing block, to the layout
where they are), turns the kernel's float64 group statistics into new running
statistics, and keeps for the backward pass only ``x``, the group statistics and the
scale/bias vectors (the kernel recomputes ``z`` and ``y`` from them). Same keyword
signatures and return/pullback contract as :mod:`luxlib._generic.normalization`.
"""

import math
from functools import partial

import numpy as np

from .._dispatch import register
from .._generic.normalization import _sum_to
from .._kernels import normalization as kernels

# layernorm rows are cut into runs of at most this many elements, so a few long rows
# can be split across threads
_RUN = 4096


def _param(act):
    return act.params[0] if act.params else 0.0


def _vector(v, n, fill, dtype):
    """``v`` (None: ``fill``) as a contiguous ``(n,)`` array of ``dtype``."""
    return np.full(n, fill, dtype) if v is None else np.ascontiguousarray(v, dtype).reshape(n)


def _normalize(act, x, scale, bias, geom, epsilon, stats=None):
    """Run the forward kernel on C-contiguous ``x``; return ``(y, mean, var)`` (flat)."""
    x = x.reshape(-1)
    y = np.empty_like(x)
    if stats is None:
        mean, var = np.empty(geom[0]), np.empty(geom[0])
    else:
        mean, var = (np.ascontiguousarray(s, np.float64) for s in stats)
    kernels.forward(act.id, _param(act), x, scale, bias, y, mean, var, stats is not None, epsilon, geom)
    return y, mean, var


def _backward(act, x, scale, bias, mean, var, batch_stats, epsilon, geom):
    """``pullback(dy) -> (dx, sum(g), sum(g * xhat))`` (the kernel recomputes ``y``)."""
    x = x.reshape(-1)

    def pullback(dy):
        dy = np.ascontiguousarray(dy, x.dtype).reshape(-1)
        dx = np.empty_like(dy)
        sums = kernels.backward(act.id, _param(act), x, scale, bias, dy, dx, mean, var, batch_stats, epsilon, geom)
        return (dx, *sums)

    return pullback


def _supports(act, x, **_):
    # user activations (id -1) and empty arrays run on the generic path
    return 0 <= act.id < kernels.N_ACTIVATIONS and x.size > 0


# ---- batchnorm, instancenorm, groupnorm: x as (N, C, S), one scale/bias per run ------


def _ncs(x):
    x = np.ascontiguousarray(x)
    return x, (x.shape[0], x.shape[1], math.prod(x.shape[2:]))


def _channel_grads(pullback, x, has_scale, has_bias, shape):
    """The op's pullback: the gradient dict from the kernel's per-(n, c) run sums."""
    xshape, dtype = x.shape, x.dtype
    n, c, _ = shape

    def grads(dy):
        dx, sg, sgx = pullback(dy)
        return {
            "x": dx.reshape(xshape),
            "scale": sgx.reshape(n, c).sum(axis=0).astype(dtype) if has_scale else None,
            "bias": sg.reshape(n, c).sum(axis=0).astype(dtype) if has_bias else None,
        }

    return grads


def _running(x, shape, per_sample, mean, var, running_mean, running_var, momentum):
    """New running statistics; ``per_sample``: the group statistics are per (n, c)."""
    n, c, s = shape
    if per_sample:
        mean, var, count = mean.reshape(n, c).mean(axis=0), var.reshape(n, c).mean(axis=0), s
    else:
        count = n * s
    dtype = running_mean.dtype
    return (
        ((1 - momentum) * running_mean + momentum * mean).astype(dtype),
        ((1 - momentum) * running_var + (momentum * count / (count - 1)) * var).astype(dtype),
    )


def _running_norm(per_sample, with_vjp, act, x, scale, bias, running_mean, running_var, training, momentum, epsilon):
    """batchnorm (``per_sample`` False: one group per channel) or instancenorm (per (n, c))."""
    x, shape = _ncs(x)
    n, c, s = shape
    if per_sample:
        geom = (n * c, 1, s, s, s, s, c, 1, 0, False)
    else:
        geom = (c, n, s, c * s, s, s, c, 1, 0, False)
    sv, bv = _vector(scale, c, 1, x.dtype), _vector(bias, c, 0, x.dtype)
    given = running_mean is not None and not training
    stats = None
    if given:
        reps = n if per_sample else 1
        stats = (running_mean, running_var)
        given_stats = (np.tile(running_mean, reps), np.tile(running_var, reps))
        y, mean, var = _normalize(act, x, sv, bv, geom, epsilon, given_stats)
    else:
        y, mean, var = _normalize(act, x, sv, bv, geom, epsilon)
        if running_mean is not None:
            stats = _running(x, shape, per_sample, mean, var, running_mean, running_var, momentum)
    out = (y.reshape(x.shape), stats)
    if not with_vjp:
        return out
    pullback = _backward(act, x, sv, bv, mean, var, not given, epsilon, geom)
    return out, _channel_grads(pullback, x, scale is not None, bias is not None, shape)


def _groupnorm(with_vjp, act, x, scale, bias, groups, epsilon):
    x, shape = _ncs(x)
    n, c, s = shape
    cg = c // groups
    geom = (n * groups, cg, cg * s, s, s, s, groups, cg, 1, False)
    sv, bv = _vector(scale, c, 1, x.dtype), _vector(bias, c, 0, x.dtype)
    y, mean, var = _normalize(act, x, sv, bv, geom, epsilon)
    if not with_vjp:
        return y.reshape(x.shape)
    pullback = _backward(act, x, sv, bv, mean, var, True, epsilon, geom)
    return y.reshape(x.shape), _channel_grads(pullback, x, scale is not None, bias is not None, shape)


# ---- layernorm: rows over the reduced axes (moved last when needed), per-element affine ----


def _padded(v, ndim):
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def _layernorm_supports(act, x, scale, bias, axes, **_):
    # scale/bias varying along a non-reduced axis would need a full-size affine per row
    kept = [i for i in range(x.ndim) if i not in axes]
    return _supports(act, x) and all(
        v is None or all(_padded(v, x.ndim).shape[i] == 1 for i in kept) for v in (scale, bias)
    )


def _layernorm(with_vjp, act, x, scale, bias, axes, epsilon):
    kept = [i for i in range(x.ndim) if i not in axes]
    perm = kept + list(axes)
    xt = np.ascontiguousarray(x.transpose(perm))  # copies only when needed
    rows = math.prod(x.shape[i] for i in kept)
    length = math.prod(x.shape[i] for i in axes)
    run = min(length, _RUN)
    nruns = -(-length // run)
    geom = (rows, nruns, length, run, run, length - (nruns - 1) * run, 1, 0, run, True)

    def vector(v, fill):
        if v is None:
            return np.full(length, fill, x.dtype)
        v = np.broadcast_to(_padded(v, x.ndim), x.shape).transpose(perm)[(0,) * len(kept)]
        return np.ascontiguousarray(v, x.dtype).reshape(length)

    sv, bv = vector(scale, 1), vector(bias, 0)
    yt, mean, var = _normalize(act, xt, sv, bv, geom, epsilon)
    inverse = np.argsort(perm)
    y = yt.reshape(xt.shape).transpose(inverse)
    if not with_vjp:
        return y
    pullback = _backward(act, xt, sv, bv, mean, var, True, epsilon, geom)
    # per-element sums over the rows, shaped like x with the kept axes of length 1
    col_shape = tuple(n if i in axes else 1 for i, n in enumerate(x.shape))
    scale_shape = None if scale is None else scale.shape
    bias_shape = None if bias is None else bias.shape
    tshape, dtype = xt.shape, x.dtype

    def grads(dy):
        dx, sg, sgx = pullback(np.ascontiguousarray(dy.transpose(perm)))
        return {
            "x": dx.reshape(tshape).transpose(inverse),
            "scale": None if scale_shape is None else _sum_to(sgx.reshape(col_shape), scale_shape).astype(dtype),
            "bias": None if bias_shape is None else _sum_to(sg.reshape(col_shape), bias_shape).astype(dtype),
        }

    return y, grads


register(
    "batchnorm",
    "looped",
    forward=partial(_running_norm, False, False),
    vjp=partial(_running_norm, False, True),
    supports=_supports,
)
register(
    "instancenorm",
    "looped",
    forward=partial(_running_norm, True, False),
    vjp=partial(_running_norm, True, True),
    supports=_supports,
)
register("groupnorm", "looped", forward=partial(_groupnorm, False), vjp=partial(_groupnorm, True), supports=_supports)
register(
    "layernorm",
    "looped",
    forward=partial(_layernorm, False),
    vjp=partial(_layernorm, True),
    supports=_layernorm_supports,
)
