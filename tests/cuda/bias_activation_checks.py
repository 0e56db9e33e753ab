"""The bias_activation kernels' check against the generic path, shared by the emulator
tests and the GPU tests.

Tolerance: with ``scale = 1 + |z| + |reference|``, ``|kernel - generic| <= TOL[dtype] *
scale`` for finite elements, NaN/Inf at the same places; ``db`` within the sum of those
tolerances per channel. float16 is compared as the kernels compute it: ``x + bias``
rounded to float16, then float32 arithmetic with the activation's parameters rounded to
float16.
"""

import numpy as np

import luxlib

TOL = {np.float16: 8 * float(np.finfo(np.float16).eps), np.float32: 16 * float(np.finfo(np.float32).eps),
       np.float64: 1e-12}
SPECIALS = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e4, -1e4, 50, -90, 40, -80, 3, -3, 6, 1, -1, 0.5]


def make_inputs(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    if x.size >= 17:
        x.flat[rng.permutation(x.size)[: len(SPECIALS)]] = SPECIALS[: min(x.size, len(SPECIALS))]
    channels = shape[0] if len(shape) == 1 else shape[1]
    return (x.astype(dtype), rng.standard_normal(channels).astype(dtype),
            rng.standard_normal(shape).astype(dtype))


def error_scale(z, want):
    z, want = (np.abs(np.where(np.isfinite(a), a, 0).astype(np.float64)) for a in (z, want))
    return 1 + z + want


def assert_close(got, want, z, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: Inf values")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"{what}: finite positions")
    ratio = np.abs(got[finite].astype(np.float64) - want[finite]) / error_scale(z, want)[finite]
    assert ratio.size == 0 or ratio.max() <= TOL[want.dtype.type], f"{what}: max error {ratio.max():.3g} x scale"


def assert_db_close(got, want, dx, z, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    finite = np.isfinite(want)
    scale = error_scale(np.broadcast_to(z, dx.shape), dx)
    if dx.ndim > 1:
        scale = np.sum(scale, axis=(0,) + tuple(range(2, dx.ndim)))
    err = np.abs(got[finite].astype(np.float64) - want[finite])
    assert np.all(err <= TOL[want.dtype.type] * scale[finite]), what


def _bias_sum(dx):
    return dx if dx.ndim == 1 else dx.sum(axis=(0,) + tuple(range(2, dx.ndim)), dtype=np.float64)


def generic(f, args, dy):
    with luxlib.backend("generic"), np.errstate(all="ignore"):
        y, pullback = luxlib.vjp(f, *args)
        return y, pullback(dy)


def check_bias_activation(run, act, x, bias, dy):
    """Compare ``run(act, x, bias, dy) -> (y of the forward, y of the vjp, gradients)``
    (NumPy arrays) with the generic path."""
    what = f"{act!r} {x.dtype} {x.shape} bias={bias is not None}"
    f = luxlib.bias_activation
    with np.errstate(all="ignore"):
        z = x if bias is None else x + bias.reshape((-1,) if x.ndim == 1 else (1, -1) + (1,) * (x.ndim - 2))
    if x.dtype == np.float16:
        # the kernels compute float16 in float32 (x + bias rounded to float16 first), which the
        # generic float16 path does not (its intermediates overflow, e.g. gelu's x**3)
        # with its parameters rounded to float16, as the kernels (and NumPy's scalar rules) do
        act16 = act.with_params(**{n: float(np.float16(v)) for n, v in zip(act.param_names, act.params)})
        y_ref, g_ref = generic(luxlib.fast_activation, (act16, z.astype(np.float32)), dy.astype(np.float32))
        dx32 = g_ref[1]
        g_ref = (None, dx32.astype(np.float16),
                 None if bias is None else _bias_sum(dx32).astype(np.float16))
        y_ref = y_ref.astype(np.float16)
    else:
        y_ref, g_ref = generic(f, (act, x, bias), dy)
    y, y2, grads = run(act, x, bias, dy)
    np.testing.assert_array_equal(y, y2)
    assert_close(y, y_ref, z, what + " y")
    assert_close(grads["x"], g_ref[1], z, what + " dx")
    if bias is None:
        assert grads["bias"] is None
    else:
        assert_db_close(grads["bias"], g_ref[2], g_ref[1], z, what + " db")
