"""float16 gradients that sum over a long axis add up in float32 (the generic path, which
runs every float16 call): NumPy's float16 ``sum`` stalls at 2048 when adding ones.

Each case sums 20000 terms of one sign per output element (at most 40000 in all) (``dy = 1 + sign(y)``); the
reference is the same call on the float16 inputs upcast to float32.
"""

import numpy as np
import pytest

import luxlib

N = 20000
F16 = np.float16


def _inputs(seed, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(F16) for s in shapes]


def _affine(s, b):
    """A positive scale and a small bias: y's sign is xhat's, so dy * xhat is one-signed."""
    return (abs(s) + 0.5).astype(F16), b / 10


def _bias_activation():
    x, b = _inputs(0, (N, 3), (3,))
    return luxlib.bias_activation, ("relu", x, b), {}, 2


def _dense():
    w, x, b = _inputs(1, (3, 2), (N, 2), (3,))
    return luxlib.fused_dense_bias_activation, ("gelu", w, x, b), {}, 3


def _conv():
    w, x, b = _inputs(2, (2, 1, 1), (N, 1, 1), (2,))
    return luxlib.fused_conv_bias_activation, (None, w, x, b, luxlib.ConvDims(x.shape, w.shape)), {}, 3


def _batchnorm_scale():
    x, s, b = _inputs(3, (N, 2), (2,), (2,))
    s, b = _affine(s, b)
    return luxlib.batchnorm, (x, s, b, None, None, True), {"epsilon": 1e-3}, 1


def _batchnorm_bias():
    return _batchnorm_scale()[:3] + (2,)


def _instancenorm():
    x, s, b = _inputs(4, (N // 2, 2, 2), (2,), (2,))
    s, b = _affine(s, b)
    return luxlib.instancenorm, (x, s, b, True), {"act": "relu", "epsilon": 1e-3}, 2


def _groupnorm():
    x, s, b = _inputs(5, (N // 2, 4, 2), (4,), (4,))
    s, b = _affine(s, b)
    return luxlib.groupnorm, (x, s, b, 2), {"epsilon": 1e-3}, 1


def _layernorm():
    x, s, b = _inputs(6, (N, 2), (2,), (2,))
    s, b = _affine(s, b)
    return luxlib.layernorm, (x, s, b), {"dims": (0,), "epsilon": 1e-3}, 2


def _batched_matmul():
    x, y = (abs(a) for a in _inputs(7, (N, 2, 3), (1, 3, 2)))
    return luxlib.batched_matmul, (x, y), {}, 1


CASES = [_bias_activation, _dense, _conv, _batchnorm_scale, _batchnorm_bias, _instancenorm, _groupnorm,
         _layernorm, _batched_matmul]


def _upcast(a):
    return a.astype(np.float32) if isinstance(a, np.ndarray) else a


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[1:])
def test_float16_gradient_sums_run_in_float32(case):
    f, args, kwargs, k = case()
    y, pullback = luxlib.vjp(f, *args, **kwargs)
    dy = 1 + np.sign(y[0] if isinstance(y, tuple) else y)
    got = pullback(dy)[k]
    want = luxlib.vjp(f, *map(_upcast, args), **kwargs)[1](dy.astype(np.float32))[k]
    assert got.dtype == F16 and got.shape == want.shape
    assert np.abs(want).min() > 4096  # past where float16 sums of terms near 1 stall
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=4e-3)
