"""The "naive NumPy" contender: what a user writes by hand without luxlib.

Each op is a pair ``forward(...) -> (y, saved)`` and ``backward(saved, dy) -> grads``,
composed from plain NumPy expressions (one temporary per step, no fusion), with the
gradients in the order of luxlib's differentiable positional arguments.
"""

import math

import numpy as np

# Python floats, so that float32 arrays stay float32 (NumPy scalars would promote).
# Cubes are z * z * z: NumPy's float32 z**3 calls powf per element, ~80x slower, and
# softplus is NNlib's log1p(exp(-|z|)) + max(z, 0), ~4x faster than np.logaddexp(z, 0):
# the baseline is a careful user's, not a needlessly slow one.
_GELU_C = math.sqrt(2 / math.pi)
_GELU_A = 0.044715


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _gelu_dx(z, y, dy):
    t = np.tanh(_GELU_C * (z + _GELU_A * z * z * z))
    return dy * (0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * z * z))


#: name -> (f(z), df(z, y, dy) -> dz); NNlib's formulas (gelu is the tanh approximation)
ACTS = {
    None: (lambda z: z, lambda z, y, dy: dy),
    "relu": (lambda z: np.maximum(z, 0), lambda z, y, dy: dy * (y > 0)),
    "gelu": (lambda z: 0.5 * z * (1 + np.tanh(_GELU_C * (z + _GELU_A * z * z * z))), _gelu_dx),
    "sigmoid": (_sigmoid, lambda z, y, dy: dy * y * (1 - y)),
    "swish": (lambda z: z * _sigmoid(z), lambda z, y, dy: dy * (_sigmoid(z) + y * (1 - _sigmoid(z)))),
    "tanh": (np.tanh, lambda z, y, dy: dy * (1 - y * y)),
    "softplus": (lambda z: np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0), lambda z, y, dy: dy * _sigmoid(z)),
}


def _channel(v, ndim):
    """View a per-channel vector along axis 1 of an ``ndim``-D array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _sum_to(a, shape):
    """Sum ``a`` down to ``shape``, which broadcasts against it (like NumPy's rules)."""
    padded = (1,) * (a.ndim - len(shape)) + tuple(shape)
    axes = tuple(i for i, (n, m) in enumerate(zip(a.shape, padded)) if m == 1 and n != 1)
    return a.sum(axis=axes).reshape(shape) if axes else a.reshape(shape)


def activation_forward(act, x, bias=None):
    z = x if bias is None else x + _channel(bias, x.ndim)
    y = ACTS[act][0](z)
    return y, (act, z, y, bias is not None)


def activation_backward(saved, dy):
    act, z, y, has_bias = saved
    dz = ACTS[act][1](z, y, dy)
    if not has_bias:
        return (dz,)
    return dz, dz.sum(axis=(0,) + tuple(range(2, dz.ndim)))


def relu_forward_(x, bias=None):
    """In-place ``relu(x + bias)`` into ``x``, as a user avoiding temporaries writes it."""
    if bias is not None:
        np.add(x, _channel(bias, x.ndim), out=x)
    y = np.maximum(x, 0, out=x)
    return y, (None, None, y, bias is not None)


def relu_backward_(saved, dy):
    return activation_backward(("relu",) + saved[1:], dy)


def dropout_forward(rng, x, p):
    mask = (rng.random(x.shape, dtype=x.dtype) > p) * x.dtype.type(1 / (1 - p))
    return x * mask, mask


def dropout_backward(mask, dy):
    return (dy * mask,)


ALPHA = -1.7580993408473766


def alpha_dropout_forward(rng, x, p):
    a = 1 / math.sqrt((1 - p) * (1 + p * ALPHA**2))
    keep = rng.random(x.shape, dtype=x.dtype) > p
    y = np.where(keep, x, x.dtype.type(ALPHA)) * x.dtype.type(a) + x.dtype.type(-a * ALPHA * p)
    return y, (keep, x.dtype.type(a))


def alpha_dropout_backward(saved, dy):
    keep, a = saved
    return (dy * a * keep,)


def _normalize(x, scale, bias, axes, eps, act):
    """``act((x - mean) / sqrt(var + eps) * scale + bias)``, statistics over ``axes``.

    ``scale``/``bias`` are already shaped to broadcast against ``x``. Returns
    ``(y, saved, mean, var)``.
    """
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + eps)
    xhat = (x - mean) * inv
    z = xhat * scale + bias
    y = ACTS[act][0](z)
    return y, (act, xhat, inv, z, y, scale, axes), mean, var


def normalize_backward(saved, dy):
    """Gradients ``(dx, dscale, dbias)``, the last two in ``scale``'s shape as passed."""
    act, xhat, inv, z, y, scale, axes = saved
    dz = ACTS[act][1](z, y, dy)
    g = dz * scale
    dx = inv * (g - g.mean(axis=axes, keepdims=True) - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    return dx, _sum_to(dz * xhat, scale.shape), _sum_to(dz, scale.shape)


def _per_channel(saved, dy):
    dx, dscale, dbias = normalize_backward(saved, dy)
    return dx, dscale.reshape(-1), dbias.reshape(-1)


def batchnorm_forward(x, scale, bias, running_mean, running_var, eps, act, momentum=0.1):
    axes = (0,) + tuple(range(2, x.ndim))
    y, saved, mean, var = _normalize(x, _channel(scale, x.ndim), _channel(bias, x.ndim), axes, eps, act)
    n = x.size // x.shape[1]
    stats = (
        (1 - momentum) * running_mean + momentum * mean.reshape(-1),
        (1 - momentum) * running_var + momentum * n / (n - 1) * var.reshape(-1),
    )
    return (y, stats), saved


batchnorm_backward = _per_channel


def instancenorm_forward(x, scale, bias, eps, act):
    axes = tuple(range(2, x.ndim))
    return _normalize(x, _channel(scale, x.ndim), _channel(bias, x.ndim), axes, eps, act)[:2]


instancenorm_backward = _per_channel


def groupnorm_forward(x, scale, bias, groups, eps, act):
    n, c = x.shape[:2]
    shape = (n, groups, c // groups) + x.shape[2:]
    param = (1, groups, c // groups) + (1,) * (x.ndim - 2)
    axes = tuple(range(2, len(shape)))
    y, saved = _normalize(x.reshape(shape), scale.reshape(param), bias.reshape(param), axes, eps, act)[:2]
    return y.reshape(x.shape), saved


def groupnorm_backward(saved, dy):
    dx, dscale, dbias = _per_channel(saved, dy.reshape(saved[1].shape))
    return dx.reshape(dy.shape), dscale, dbias


def layernorm_forward(x, scale, bias, axes, eps):
    return _normalize(x, scale, bias, axes, eps, None)[:2]


layernorm_backward = normalize_backward


def dense_forward(act, weight, x, bias):
    z = x @ weight.T
    if bias is not None:
        z = z + bias
    y = ACTS[act][0](z)
    return y, (act, weight, x, z, y, bias is not None)


def dense_backward(saved, dy):
    act, weight, x, z, y, has_bias = saved
    dz = ACTS[act][1](z, y, dy)
    grads = (dz.T @ x, dz @ weight)
    return grads + (dz.sum(axis=0),) if has_bias else grads


def bmm_forward(x, y):
    return np.matmul(x, y), (x, y)


def bmm_backward(saved, dz):
    x, y = saved
    return np.matmul(dz, y.transpose(0, 2, 1)), np.matmul(x.transpose(0, 2, 1), dz)


def _windows(xg, i, j, stride, ho, wo):
    """The input pixels that kernel tap ``(i, j)`` meets, ``(N, G, Cg, Ho, Wo)``."""
    return xg[..., i : i + stride * ho : stride, j : j + stride * wo : stride]


def conv2d_forward(act, weight, x, bias, stride, padding, groups):
    """Shift-and-accumulate 2-D cross-correlation: one contraction per kernel tap."""
    n, c, h, w = x.shape
    out, cg, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    xg = xp.reshape(n, groups, cg, *xp.shape[2:])
    wg = weight.reshape(groups, out // groups, cg, kh, kw)
    z = np.zeros((n, groups, out // groups, ho, wo), x.dtype)
    for i in range(kh):
        for j in range(kw):
            z += np.einsum("ngchw,goc->ngohw", _windows(xg, i, j, stride, ho, wo), wg[..., i, j], optimize=True)
    z = z.reshape(n, out, ho, wo) + _channel(bias, 4)
    y = ACTS[act][0](z)
    return y, (act, z, y, xg, wg, stride, padding, x.shape)


def conv2d_backward(saved, dy):
    act, z, y, xg, wg, stride, padding, shape = saved
    dz = ACTS[act][1](z, y, dy)
    n, _, ho, wo = dz.shape
    dzg = dz.reshape(n, wg.shape[0], wg.shape[1], ho, wo)
    dxg = np.zeros_like(xg)
    dwg = np.zeros_like(wg)
    for i in range(wg.shape[3]):
        for j in range(wg.shape[4]):
            dwg[..., i, j] = np.einsum("ngohw,ngchw->goc", dzg, _windows(xg, i, j, stride, ho, wo), optimize=True)
            _windows(dxg, i, j, stride, ho, wo)[...] += np.einsum("ngohw,goc->ngchw", dzg, wg[..., i, j], optimize=True)
    h, w = shape[2:]
    dx = dxg.reshape(n, -1, *dxg.shape[3:])[:, :, padding : padding + h, padding : padding + w]
    return dwg.reshape(-1, *wg.shape[2:]), dx, dz.sum(axis=(0, 2, 3))
