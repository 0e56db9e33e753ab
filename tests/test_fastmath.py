"""Accuracy of the float32 fast math (``luxlib/_kernels/_fastmath.pxd``) and of the
float32 activation kernels built on it, against float64, over a dense sweep of float32
inputs (every 1021st / 4093rd bit pattern: all exponents, subnormals, +-0, +-inf, NaN).

Metrics (doc/build.md):
- math functions: ``|got - ref| / ulp32(ref)``, ``ref`` the float64 result; non-finite
  results and the sign of zero must match exactly.
- activations and their derivatives: ``|got - ref| <= K * eps32 * (max(|ref|, FLT_MIN)
  * (1 + |z|) + S)`` with ``S = 1 + |z|`` where the formula subtracts terms of size
  ``O(1 + |z|)`` (every derivative; gelu, gelu_erf, tanhshrink forward), else ``S = 0``.
  ``(1 + |z|)`` is the conditioning of ``exp(+-z)``; FLT_MIN floors subnormal results.
  Compared where NumPy's float32 evaluation of the same formula is finite; elsewhere the
  kernel must give the same non-finite value.
"""

import numpy as np
import pytest
from scipy.special import erf

from luxlib import activations
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

from luxlib._kernels import activation as kernels  # noqa: E402

EPS32 = 2.0**-23
TINY32 = float(np.finfo(np.float32).tiny)
EDGES = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-38, 88.72283, 88.72284, 89.0,
         -87.3, -103.9, -104.0, -1.0, -0.99999994, 1e-8, -1e-8, 0.625, -0.625, 1.0, -1.0, 2**24,
         # where the float32 forms switch: erf's clamp, mish's clamp at 20, the exp range,
         # gelu's derivative overflowing (NaN from inf * 0)
         4.0, -4.0, 20.0, 20.000002, -20.0, 43.0, 43.000004, -25.0, 1.5e13, -1.5e13, 2e13, -2e13,
         2e19, -2e19]


def sweep(step):
    x = np.arange(0, 2**32, step, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([x, np.array(EDGES, np.float32)])


MATH = {  # name: (float64 reference, max ulp)
    "exp": (np.exp, 1.0),
    "expm1": (np.expm1, 2.0),
    "log1p": (np.log1p, 1.0),
    "tanh": (np.tanh, 2.0),
    "erf": (erf, 7.0),  # one rational for all |x| <= 4: 5-6 ulp where erf is close to 1
}


@pytest.fixture(scope="module")
def xs():
    return sweep(1021)


@pytest.mark.parametrize("name", MATH)
def test_fast_math_ulp(name, xs):
    ref_f, bound = MATH[name]
    got = np.empty_like(xs)
    kernels.fastmath(name, xs, got)
    with np.errstate(all="ignore"):
        ref = ref_f(xs.astype(np.float64))
        ref32 = ref.astype(np.float32)
    finite = np.isfinite(ref32)
    # overflow, inf, NaN, domain errors: exactly as float64 rounded to float32
    np.testing.assert_array_equal(got[~finite], ref32[~finite])
    ulp = np.spacing(np.abs(ref32[finite])).astype(np.float64)
    err = np.abs(got[finite].astype(np.float64) - ref[finite]) / ulp
    assert err.max() <= bound, f"{name}: {err.max():.3f} ulp at x={xs[finite][err.argmax()]!r}"
    zeros = np.array([0.0, -0.0], np.float32)
    kernels.fastmath(name, zeros, got[:2])
    if name == "exp":
        np.testing.assert_array_equal(got[:2], [1, 1])
    else:  # odd functions keep the sign of zero
        np.testing.assert_array_equal(np.signbit(got[:2]), [False, True])


def test_fast_math_rejects_bad_arguments():
    x = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="out must have length 3, got 2"):
        kernels.fastmath("exp", x, np.zeros(2, np.float32))
    with pytest.raises(ValueError):
        kernels.fastmath("log", x, x.copy())


CANCEL_FORWARD = {"gelu", "gelu_erf", "tanhshrink"}
# gelu_sigmoid: sigmoid's argument grows like z^3, so its conditioning exceeds 1 + |z|
K_FORWARD = {"gelu_sigmoid": 16}
K = 4


@pytest.fixture(scope="module")
def act_inputs():
    x = sweep(4093)
    return np.concatenate([x, np.linspace(-12, 12, 100001, dtype=np.float32)])


def check_metric(got, ref, numpy32, z, cancels, k):
    assert got.dtype == np.float32
    finite = np.isfinite(numpy32)
    np.testing.assert_array_equal(got[~finite], numpy32[~finite])
    az = np.abs(np.where(np.isfinite(z), z, 0).astype(np.float64))
    s = 1 + az if cancels else 0
    bound = k * EPS32 * (np.maximum(np.abs(ref), TINY32) * (1 + az) + s)
    with np.errstate(all="ignore"):  # inf - inf where both are non-finite (not compared)
        err = np.abs(got.astype(np.float64) - ref)
    bad = finite & ~(err <= bound)
    assert not bad.any(), f"{bad.sum()} elements out of bound, first at z={z[bad][0]!r}"


@pytest.mark.parametrize("act", list(activations.ACTIVATIONS.values()), ids=list(activations.ACTIVATIONS))
def test_float32_activation_accuracy(act, act_inputs):
    z = act_inputs
    z3 = z.reshape(1, -1, 1)
    p = act.params[0] if act.params else 0.0
    y = np.empty_like(z3)
    kernels.forward(act.id, p, z3, None, y)
    d = np.empty_like(z3)
    kernels.backward(act.id, p, y if act.output_only else z3, None, np.ones_like(z3), d, None)
    with np.errstate(all="ignore"):  # signaling-NaN bit patterns warn when cast
        z64 = z.astype(np.float64)
        y64 = act(z64)
        d64 = act.derivative(z64, y64)
        y32 = act(z)
        d32 = act.derivative(z, y32)
    check_metric(y.ravel(), y64, y32, z, act.name in CANCEL_FORWARD, K_FORWARD.get(act.name, K))
    check_metric(d.ravel(), d64, d32, z, True, K)
