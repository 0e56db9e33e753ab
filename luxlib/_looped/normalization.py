"""Looped (Cython/OpenMP) ``batchnorm``, ``groupnorm``, ``instancenorm`` and ``layernorm``.

Glue around :mod:`luxlib._kernels.normalization`: describes each op as groups of
contiguous runs (the kernel's geometry; batchnorm with short runs, such as ``(N, C)``
input, as rows of columns instead: ``_Columns``), copies ``x`` once when it is not
C-contiguous (layernorm: when its ``axes`` are not a trailing block, to the layout
where they are), turns the kernel's float64 group statistics into new running
statistics, and keeps for the backward pass only ``x``, the group statistics and the
scale/bias vectors (the kernel recomputes ``z`` and ``y`` from them). Same keyword
signatures and return/pullback contract as :mod:`luxlib._generic.normalization`. The
pieces the CUDA path does alike are in :mod:`luxlib._normalization_glue`.
"""

import math
from functools import partial

import numpy as np

from .. import _normalization_glue as glue
from .._dispatch import register
from .._kernels import normalization as kernels

# layernorm rows are cut into runs of at most this many elements, so a few long rows
# can be split across threads
_RUN = 4096
# batchnorm with runs (the spatial size) of at most this many elements reads x as rows
# of columns (the kernels' cols_forward/cols_backward) instead of channel by channel
# (measured: 10-40x faster for runs of 1-16, 2x at 64, even at 128; doc/normalization.md)
_COLS_MAX_RUN = 64


def _param(act):
    return act.params[0] if act.params else 0.0


def _normalize(act, x, scale, bias, geom, epsilon, stats=None):
    """Run the forward kernel on C-contiguous ``x``; return ``(y, mean, var)`` (flat).

    ``stats``: given float64 contiguous ``(mean, var)`` per group (else computed)."""
    x = x.reshape(-1)
    y = np.empty_like(x)
    mean, var = (np.empty(geom[0]), np.empty(geom[0])) if stats is None else stats
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


def _per_channel(pullback, n, c):
    """``pullback`` with the kernel's per-(n, c) run sums added over ``n``."""

    def summed(dy):
        dx, sg, sgx = pullback(dy)
        return dx, sg.reshape(n, c).sum(axis=0), sgx.reshape(n, c).sum(axis=0)

    return summed


class _Columns:
    """batchnorm of ``(N, C, S)`` with short runs ``S``, on ``x`` as ``(N, C S)`` rows of
    columns; the same calls as ``_normalize`` and ``_backward`` (the sums per channel)."""

    def __init__(self, n, c, s):
        self.shape, self.s = (n, c * s), s

    def normalize(self, act, x, scale, bias, epsilon, stats=None):
        x = x.reshape(self.shape)
        y = np.empty_like(x)
        mean, var = (np.empty(scale.shape[0]), np.empty(scale.shape[0])) if stats is None else stats
        kernels.cols_forward(act.id, _param(act), x, scale, bias, y, mean, var, stats is not None, epsilon, self.s)
        return y, mean, var

    def backward(self, act, x, scale, bias, mean, var, batch_stats, epsilon):
        x = x.reshape(self.shape)

        def pullback(dy):
            dy = np.ascontiguousarray(dy, x.dtype).reshape(self.shape)
            dx = np.empty_like(dy)
            sums = kernels.cols_backward(act.id, _param(act), x, scale, bias, dy, dx, mean, var, batch_stats,
                                         epsilon, self.s)
            return (dx, *sums)

        return pullback


def _running_norm(per_sample, with_vjp, act, x, scale, bias, running_mean, running_var, training, momentum, epsilon):
    """batchnorm (``per_sample`` False: one group per channel) or instancenorm (per (n, c))."""
    x, (n, c, s) = _ncs(x)
    if per_sample:
        geom = (n * c, 1, s, s, s, s, c, 1, 0, False)
    else:
        geom = (c, n, s, c * s, s, s, c, 1, 0, False)
    sv, bv = glue.channel_vectors(x, scale, bias)
    # an infinite scale: the group kernels, whose per-run sums of g * scale turn the
    # mixed signs of h = g * scale into NaN as the formula does (the column kernels
    # form mean(h) as sum(g) * scale: one infinity)
    short = not per_sample and s <= _COLS_MAX_RUN and np.isfinite(sv).all()
    cols = _Columns(n, c, s) if short else None
    given = running_mean is not None and not training
    fixed = glue.given_stats(running_mean, running_var, x.shape, per_sample) if given else None
    if cols is None:
        y, mean, var = _normalize(act, x, sv, bv, geom, epsilon, fixed)
    else:
        y, mean, var = cols.normalize(act, x, sv, bv, epsilon, fixed)
    stats = None
    if given:
        stats = (running_mean, running_var)
    elif running_mean is not None:
        stats = glue.updated_stats(mean, var, x.shape, per_sample, running_mean, running_var, momentum)
    out = (y.reshape(x.shape), stats)
    if not with_vjp:
        return out
    if cols is not None:
        return out, glue.channel_grads(cols.backward(act, x, sv, bv, mean, var, not given, epsilon), x, scale, bias)
    pullback = _backward(act, x, sv, bv, mean, var, not given, epsilon, geom)
    return out, glue.channel_grads(_per_channel(pullback, n, c), x, scale, bias)


def _groupnorm(with_vjp, act, x, scale, bias, groups, epsilon):
    x, (n, c, s) = _ncs(x)
    cg = c // groups
    geom = (n * groups, cg, cg * s, s, s, s, groups, cg, 1, False)
    sv, bv = glue.channel_vectors(x, scale, bias)
    y, mean, var = _normalize(act, x, sv, bv, geom, epsilon)
    if not with_vjp:
        return y.reshape(x.shape)
    pullback = _backward(act, x, sv, bv, mean, var, True, epsilon, geom)
    return y.reshape(x.shape), glue.channel_grads(_per_channel(pullback, n, c), x, scale, bias)


# ---- layernorm: rows over the reduced axes (moved last when needed), per-element affine ----


def _layernorm(with_vjp, act, x, scale, bias, axes, epsilon):
    rows = glue.layernorm_rows(x, axes)
    xt = rows.to_rows(x)  # copies only when needed
    run = min(rows.length, _RUN)
    nruns = -(-rows.length // run)
    geom = (rows.rows, nruns, rows.length, run, run, rows.length - (nruns - 1) * run, 1, 0, run, True)
    sv, bv = rows.vector(scale, 1), rows.vector(bias, 0)
    yt, mean, var = _normalize(act, xt, sv, bv, geom, epsilon)
    y = rows.from_rows(yt)
    if not with_vjp:
        return y
    pullback = _backward(act, xt, sv, bv, mean, var, True, epsilon, geom)
    return y, rows.grads(pullback, scale, bias)


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
    supports=partial(glue.layernorm_supports, _supports),
)
