"""Glue shared by the kernel paths of the normalizations.

What :mod:`luxlib._looped.normalization` (Cython kernels) and
:mod:`luxlib.cuda._normalization` (CUDA kernels) do alike around their kernels, written
against the arrays' namespace (``luxlib._validation.array_namespace``): scale/bias as
contiguous vectors, running statistics in and out of the kernels' float64 group
statistics, the channel ops' gradient dict, and layernorm's rows (reduced axes moved
last, per-element scale/bias vectors, results and gradients back in ``x``'s axes). It
imports neither the Cython build nor CuPy, so both paths can import it.
"""

import functools
import math

import numpy as np

from ._generic.normalization import _sum_to
from ._validation import array_namespace

# ---- batchnorm, instancenorm, groupnorm: one scale/bias per channel --------------------


def channel_vectors(x, scale, bias):
    """scale and bias (None: ones, zeros) as contiguous ``(C,)`` arrays of ``x``'s dtype
    and namespace."""
    xp, c = array_namespace(x), x.shape[1]

    def vector(v, fill):
        return xp.full((c,), fill, x.dtype) if v is None else xp.ascontiguousarray(v, dtype=x.dtype).reshape(c)

    return vector(scale, 1), vector(bias, 0)


def given_stats(running_mean, running_var, shape, per_sample):
    """The running statistics as the kernels' contiguous float64 ``(mean, var)`` group
    statistics: one per channel, or one per ``(n, c)`` when ``per_sample`` (``shape``:
    ``x``'s)."""
    xp = array_namespace(running_mean)
    n, c = shape[:2]
    reps = n if per_sample else 1
    return tuple(xp.tile(xp.asarray(s, dtype=xp.float64).reshape(c), reps) for s in (running_mean, running_var))


def updated_stats(mean, var, shape, per_sample, running_mean, running_var, momentum):
    """New running statistics (``running_mean``'s dtype) from the float64 group statistics
    ``mean``, ``var`` of ``x`` of ``shape``: one per channel, or one per ``(n, c)`` when
    ``per_sample`` (averaged over the batch). The variance is made unbiased with the
    element count of a group."""
    n, c = shape[:2]
    count = math.prod(shape[2:])
    if per_sample:
        mean, var = mean.reshape(n, c).mean(axis=0), var.reshape(n, c).mean(axis=0)
    else:
        count *= n
    dtype = running_mean.dtype
    return (
        ((1 - momentum) * running_mean + momentum * mean).astype(dtype),
        ((1 - momentum) * running_var + (momentum * count / (count - 1)) * var).astype(dtype),
    )


def channel_grads(pullback, x, scale, bias):
    """The channel ops' pullback ``dy -> {"x", "scale", "bias"}``.

    ``pullback(dy) -> (dx, sum(g), sum(g * xhat))`` with the sums per channel (float64, or
    already in ``x``'s dtype); ``dx`` is reshaped to ``x``'s shape, the sums cast to its
    dtype as contiguous arrays (None where scale or bias is None). Keeps no reference to
    ``x``, ``scale`` or ``bias``.
    """
    xp, shape, dtype = array_namespace(x), x.shape, x.dtype
    has_scale, has_bias = scale is not None, bias is not None

    def grads(dy):
        dx, sg, sgx = pullback(dy)
        return {
            "x": dx.reshape(shape),
            "scale": xp.ascontiguousarray(sgx, dtype=dtype) if has_scale else None,
            "bias": xp.ascontiguousarray(sg, dtype=dtype) if has_bias else None,
        }

    return grads


# ---- layernorm: rows over the reduced axes, one scale/bias per element of a row -------


def _padded(v, ndim):
    return v.reshape((1,) * (ndim - v.ndim) + tuple(v.shape))


def layernorm_supports(supports, act, x, scale, bias, axes, **_):
    """``supports(act, x)``, and scale/bias constant along the kept (non-reduced) axes:
    otherwise one ``(length,)`` vector could not serve every row (the kernels would need
    a full-size affine per row)."""
    return supports(act, x) and all(v is None or _constant_along_kept(v.shape, x.ndim, axes) for v in (scale, bias))


@functools.lru_cache(maxsize=256)
def _constant_along_kept(shape, ndim, axes):
    padded = (1,) * (ndim - len(shape)) + tuple(shape)
    return all(padded[i] == 1 for i in range(ndim) if i not in axes)


def layernorm_rows(x, axes):
    """The :class:`LayernormRows` of ``x`` and the reduced ``axes`` (one per shape and dtype:
    the layout is worked out once, not on every call)."""
    return _layernorm_rows(array_namespace(x), x.dtype, tuple(x.shape), tuple(sorted(axes)))


@functools.lru_cache(maxsize=256)
def _layernorm_rows(xp, dtype, shape, axes):
    return LayernormRows(xp, dtype, shape, axes)


class LayernormRows:
    """layernorm's ``x`` (namespace ``xp``, ``dtype``, ``shape``) as ``rows`` rows of
    ``length`` elements: the reduced ``axes`` (sorted) moved last (``perm``), the kept ones
    first.

    Holds shapes only (no array), so the pullbacks built with it keep nothing alive.
    """

    def __init__(self, xp, dtype, shape, axes):
        kept = tuple(i for i in range(len(shape)) if i not in axes)
        self.xp = xp
        self.dtype = dtype
        self.perm = kept + tuple(axes)
        self.inverse = tuple(int(i) for i in np.argsort(self.perm))
        self.rows = math.prod(shape[i] for i in kept)
        self.length = math.prod(shape[i] for i in axes)
        self._nkept = len(kept)
        self._x_shape = tuple(shape)
        self._t_shape = tuple(shape[i] for i in self.perm)
        self._moves = self.perm != tuple(range(len(shape)))  # whether the reduced axes are not last already
        # per-element sums over the rows, shaped like x with the kept axes of length 1
        self._col_shape = tuple(n if i in axes else 1 for i, n in enumerate(shape))

    def to_rows(self, a):
        """``a`` (shaped like ``x``) transposed, C-contiguous (copied only when needed)."""
        return self.xp.ascontiguousarray(a.transpose(self.perm) if self._moves else a)

    def from_rows(self, a):
        """A kernel result in the rows layout (any shape of that size) as a view in ``x``'s axes."""
        if not self._moves:
            return a if a.shape == self._x_shape else a.reshape(self._x_shape)
        return a.reshape(self._t_shape).transpose(self.inverse)

    def vector(self, v, fill):
        """scale/bias (None: ``fill``) as the contiguous ``(length,)`` vector of every row
        (``v`` broadcasts against ``x`` and is constant along the kept axes)."""
        if v is None:
            return self.xp.full((self.length,), fill, self.dtype)
        if v.size == self.length:  # no axis to broadcast: v's C order is the rows' (sorted axes)
            v = self.xp.ascontiguousarray(v, dtype=self.dtype)
            return v if v.ndim == 1 else v.reshape(self.length)
        v = self.xp.broadcast_to(_padded(v, len(self._x_shape)), self._x_shape).transpose(self.perm)
        return self.xp.ascontiguousarray(v[(0,) * self._nkept], dtype=self.dtype).reshape(self.length)

    def grads(self, pullback, scale, bias):
        """layernorm's pullback ``dy -> {"x", "scale", "bias"}``.

        ``pullback(dy_rows) -> (dx, sum(g), sum(g * xhat))`` takes ``dy`` transposed to
        the rows layout (not necessarily contiguous) and gives ``dx`` in that layout and
        the sums per element of a row (float64, or already in ``x``'s dtype); the sums are
        summed to scale's/bias's shapes and cast to ``x``'s dtype (None without scale/bias).
        """
        scale_shape = None if scale is None else scale.shape
        bias_shape = None if bias is None else bias.shape

        def grads(dy):
            dx, sg, sgx = pullback(dy.transpose(self.perm))
            return {
                "x": self.from_rows(dx),
                "scale": None if scale_shape is None else self._summed(sgx, scale_shape),
                "bias": None if bias_shape is None else self._summed(sg, bias_shape),
            }

        return grads

    def _summed(self, sums, shape):
        if sums.size == math.prod(shape):  # scale/bias spans every reduced axis: no sum left
            return self.xp.ascontiguousarray(sums.reshape(shape), dtype=self.dtype)
        return _sum_to(sums.reshape(self._col_shape), shape).astype(self.dtype)
