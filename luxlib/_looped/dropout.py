"""Looped (Cython/OpenMP) ``dropout`` and ``alpha_dropout``.

Glue around :mod:`luxlib._kernels.dropout`. The key is drawn by the generic
path's :func:`~luxlib._generic.philox.draw_key`, so the rng handling is shared and
the masks are bit-identical to the generic ones (doc/dropout.md). Arrays go to
the kernels flat and C-contiguous (copied once when they are not).
"""

import math

import numpy as np

from .._dispatch import register
from .._generic.dropout import _forward
from .._generic.philox import draw_key
from .._kernels import dropout as kernels


def _supports(training, **_):
    # not training is the identity (x comes back as is): nothing for a kernel to do
    return bool(training)


def _threshold(p):
    """``thr`` with ``u > p`` exactly when ``(word >> 8) > thr``.

    ``u = (word >> 8) * 2**-24`` and ``p * 2**24`` is exact in float64 (a power-of-two
    scaling of ``p`` in ``[0, 1]``), so for the integer ``word >> 8`` the test
    ``> p * 2**24`` is the test ``> floor(p * 2**24)``.
    """
    return math.floor(p * 2.0**24)


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def _axis_groups(shape, mask_shape):
    """Describe ``mask`` broadcast against ``shape`` for ``kernels.broadcast_multiply``.

    Axes of length 1 are dropped and neighbouring axes on which the mask is full
    (or broadcast) merged, giving outer groups and a last one of length ``L``.
    Returns ``(lengths, strides, L, full)``: the outer group lengths, the mask's
    C-order stride on each (0 where it broadcasts), and whether the mask is full
    along the last group.
    """
    groups = []  # [length, full]
    for n, m in zip(shape, mask_shape):
        if n == 1:
            continue
        if groups and groups[-1][1] == (m == n):
            groups[-1][0] *= n
        else:
            groups.append([n, m == n])
    L, full = groups.pop() if groups else (1, True)
    lengths, strides = [], []
    stride = L if full else 1
    for n, is_full in reversed(groups):
        lengths.append(n)
        strides.append(stride if is_full else 0)
        stride *= n if is_full else 1
    return np.array(lengths[::-1], np.intp), np.array(strides[::-1], np.intp), L, full


def _broadcast_multiply(x, mask):
    """``x * mask`` (``mask`` broadcast against ``x``), a new C-contiguous array."""
    y = np.empty(x.shape, x.dtype)
    if x.size:
        lengths, strides, L, full = _axis_groups(x.shape, mask.shape)
        kernels.broadcast_multiply(_flat(x), _flat(mask), y.reshape(-1), lengths, strides, L, full)
    return y


def dropout_vjp(rng, x, p, training, invp, shape, mask):
    """``((y, mask, rng), pullback)``; the pullback keeps the mask (an output anyway)."""
    if mask is None:
        key, rng = draw_key(rng)
        mask = np.empty(shape, x.dtype)
        if shape == x.shape:  # mask and y in one pass
            y = np.empty(x.shape, x.dtype)
            kernels.dropout(*key, _threshold(p), invp, mask.reshape(-1), _flat(x), y.reshape(-1))
        else:  # the reduced mask, then the broadcast multiply
            kernels.dropout(*key, _threshold(p), invp, mask.reshape(-1))
            y = _broadcast_multiply(x, mask)
    else:
        y = _broadcast_multiply(x, mask)
    return (y, mask, rng), lambda dy: {"x": _broadcast_multiply(dy, mask)}


def _alpha_dropout(rng, x, p, alpha, A, B, keep=None):
    """``(y, rng)``; the keep decisions go to ``keep`` (uint8, x's shape) unless None."""
    key, rng = draw_key(rng)
    y = np.empty(x.shape, x.dtype)
    flat_keep = None if keep is None else keep.reshape(-1)
    kernels.alpha_dropout(*key, _threshold(p), alpha, A, B, _flat(x), y.reshape(-1), flat_keep)
    return y, rng


def alpha_dropout_forward(rng, x, p, training, alpha, A, B):
    return _alpha_dropout(rng, x, p, alpha, A, B)


def alpha_dropout_vjp(rng, x, p, training, alpha, A, B):
    """``((y, rng), pullback)``; the pullback keeps only the keep decisions, one byte each."""
    keep = np.empty(x.shape, np.uint8)
    out = _alpha_dropout(rng, x, p, alpha, A, B, keep)

    def pullback(dy):
        dx = np.empty(dy.shape, dy.dtype)
        kernels.alpha_dropout_backward(keep.reshape(-1), A, _flat(dy), dx.reshape(-1))
        return {"x": dx}

    return out, pullback


register("dropout", "looped", forward=_forward(dropout_vjp), vjp=dropout_vjp, supports=_supports)
register(
    "alpha_dropout", "looped", forward=alpha_dropout_forward, vjp=alpha_dropout_vjp,
    supports=_supports,
)
