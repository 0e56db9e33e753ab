"""The Cython/OpenMP activation kernels against the generic path.

Tolerance: with ``scale = 1 + |z| + |reference|`` (``z = x + bias``), every finite
element satisfies ``|looped - generic| <= TOL[dtype] * scale``: 16 ulp of ``scale``
in float32, ``1e-12 * scale`` in float64. NaN and Inf must sit at the same places
(with the same sign). ``db`` is compared against ``TOL * (1 + sum |dx|)`` per channel.
"""

import gc
import weakref

import numpy as np
import pytest

import luxlib
from luxlib import activations
from luxlib._dispatch import _REGISTRY, trace
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

from luxlib._kernels import activation as kernels  # noqa: E402
from _helpers import ALL_ACT_IDS, ALL_ACTS, BOUND_ACTS, LAYOUTS, assert_unchanged, check_gradients, snapshot, with_layout  # noqa: E402

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 16 * float(np.finfo(np.float32).eps), np.float64: 1e-12}

ACTS, ACT_IDS = ALL_ACTS, ALL_ACT_IDS
# output-only, input-needing, bound parameter, cancellation-prone
SOME_ACTS = [activations.relu, activations.gelu, BOUND_ACTS[0], activations.tanhshrink]
SOME_IDS = ["relu", "gelu", "leakyrelu(a=0.2)", "tanhshrink"]

SMALL_SHAPES = [(1,), (1, 1, 1, 1), (3,), (1, 3), (17,), (1023,), (1, 3, 11, 31), (17, 241), (1, 17, 241, 1)]
# fast_activation(act, x), bias_activation(act, x, bias), bias_activation(act, x, None)
OPS = ["fast", "bias", "nobias"]
# above the serial threshold (32768 elements): one bias per block, one bias per element,
# a single row
LARGE_CASES = [((2, 17, 33, 37), "bias"), ((2100, 17), "bias"), ((33000,), "fast")]

SPECIALS = [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e4, -1e4, 1e30, -1e30, 50, -90, 40, -80,
            3, -3, 6, 1, -1, 0.5, -0.5, 0.3, -0.3]


@pytest.fixture
def threads():
    """Set luxlib's thread count for one test."""
    yield luxlib.set_num_threads
    luxlib.set_num_threads(None)


def make_inputs(shape, dtype, seed=0):
    """``(x, bias, dy)``; x holds large, infinite and NaN values when big enough."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    if x.size >= 17:
        n = min(x.size, len(SPECIALS))
        x.flat[rng.permutation(x.size)[:n]] = SPECIALS[:n]
    channels = shape[0] if len(shape) == 1 else shape[1]
    bias = rng.standard_normal(channels)
    dy = rng.standard_normal(shape)
    return x.astype(dtype), bias.astype(dtype), dy.astype(dtype)


def call(op, act, x, bias, name=None):
    """``(function, args)`` of one OPS entry (``name`` picks e.g. the ``_`` variant)."""
    if op == "fast":
        return getattr(luxlib, name or "fast_activation"), (act, x)
    return getattr(luxlib, name or "bias_activation"), (act, x, bias if op == "bias" else None)


def pre_activation(op, x, bias):
    with np.errstate(all="ignore"):
        if op != "bias":
            return x
        return x + bias.reshape((-1,) if x.ndim == 1 else (1, -1) + (1,) * (x.ndim - 2))


def assert_close(got, want, z):
    """``got`` matches ``want`` within TOL * (1 + |z| + |want|), NaN/Inf in the same places."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN positions differ")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg="Inf values differ")
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg="finite positions differ")
    ratio = np.abs(got[finite].astype(np.float64) - want[finite]) / error_scale(z, want)[finite]
    assert ratio.size == 0 or ratio.max() <= TOL[want.dtype.type], f"max error {ratio.max():.3g} x scale"


def error_scale(z, want):
    """``1 + |z| + |want|`` with non-finite entries counted as 0."""
    z, want = (np.abs(np.where(np.isfinite(a), a, 0).astype(np.float64)) for a in (z, want))
    return 1 + z + want


def assert_db_close(got, want, dx, z):
    """``db`` matches within the sum of the ``dx`` tolerances over each channel."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg="NaN positions differ")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg="Inf values differ")
    finite = np.isfinite(want)
    scale = error_scale(np.broadcast_to(z, dx.shape), dx)
    if dx.ndim > 1:
        scale = np.sum(scale, axis=(0,) + tuple(range(2, dx.ndim)))
    err = np.abs(got[finite].astype(np.float64) - want[finite])
    assert np.all(err <= TOL[want.dtype.type] * scale[finite])


def reference(f, args, dy):
    """Generic output and gradients."""
    with luxlib.backend("generic"), np.errstate(all="ignore"):
        y, pullback = luxlib.vjp(f, *args)
        return y, pullback(dy)


def check_against_generic(op, act, x, bias, dy):
    f, args = call(op, act, x, bias)
    before = snapshot(x, bias, dy)
    with trace() as record:
        y_plain = f(*args)
        y, pullback = luxlib.vjp(f, *args)
        grads = pullback(dy)
    assert record == [(f.__name__, "looped")] * 2
    assert_unchanged(before, (x, bias, dy))
    y_ref, grads_ref = reference(f, args, dy)
    z = pre_activation(op, x, bias)
    np.testing.assert_array_equal(y_plain, y)
    assert_close(y, y_ref, z)
    assert_close(grads[1], grads_ref[1], z)
    assert grads[0] is None and len(grads) == len(args)
    if op == "bias":
        assert grads[2].shape == bias.shape and grads[2].dtype == bias.dtype
        assert_db_close(grads[2], grads_ref[2], grads_ref[1], z)
    elif op == "nobias":
        assert grads[2] is None


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=str)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_generic_small(dtype, act, shape, threads):
    threads(2)  # below the threshold the kernels run serially anyway
    x, bias, dy = make_inputs(shape, dtype)
    for op in OPS:
        check_against_generic(op, act, x, bias, dy)


@pytest.mark.parametrize("shape, op", LARGE_CASES, ids=str)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_generic_large(dtype, act, shape, op, threads):
    # two threads here; test_thread_count_independence shows one thread gives the same
    threads(2)
    x, bias, dy = make_inputs(shape, dtype, seed=1)
    check_against_generic(op, act, x, bias, dy)


@pytest.mark.parametrize("shape", [(1, 3, 11, 31), (2, 17, 33, 37), (2100, 17)], ids=str)
@pytest.mark.parametrize("alpha", [0.7, -0.7], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_celu_alpha_sign(dtype, alpha, shape, threads):
    # the forward loops run celu with alpha > 0 under its own internal id (cheaper expm1)
    threads(2)
    act = activations.celu.with_params(alpha=alpha)
    x, bias, dy = make_inputs(shape, dtype, seed=7)
    for op in OPS:
        check_against_generic(op, act, x, bias, dy)


@pytest.mark.parametrize("n", [5000, 40000])
@pytest.mark.parametrize("act", SOME_ACTS + [activations.swish, activations.tanh], ids=SOME_IDS + ["swish", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_any_output_alignment(dtype, act, n, threads):
    # a single row's blocks follow the output's cache lines: every offset of y and dx
    # gives the same values, and nothing outside them is written
    threads(2)
    p = act.params[0] if act.params else 0.0
    x, _, dy = make_inputs((n,), dtype, seed=8)
    y_ref, (_, dx_ref) = reference(luxlib.fast_activation, (act, x), dy)
    want = {}
    for offset in range(16):
        y, dx = (np.zeros(n + 16, dtype)[offset:offset + n] for _ in range(2))
        x3, y3, dy3, dx3 = (a.reshape(1, -1, 1) for a in (x, y, dy, dx))
        kernels.forward(act.id, p, x3, None, y3)
        kernels.backward(act.id, p, y3 if act.output_only else x3, None, dy3, dx3, None)
        for name, got in (("y", y), ("dx", dx)):
            base = got.base
            assert not base[:offset].any() and not base[offset + n:].any(), (name, offset)
            if offset == 0:
                want[name] = got.copy()
            np.testing.assert_array_equal(got, want[name], err_msg=f"{name}, offset {offset}")
    assert_close(want["y"], y_ref, x)
    assert_close(want["dx"], dx_ref, x)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(3, 5, 7), (11, 4), (9,), (2, 17, 1000)], ids=str)
@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_layouts(dtype, act, shape, layout):
    x, bias, dy = make_inputs(shape, dtype, seed=2)
    # every array argument in the layout; the reference runs on C-contiguous copies
    xl, bl, dyl = (with_layout(a, layout) for a in (x, bias, dy))
    check_against_generic("bias", act, xl, bl, dyl)
    y, pullback = luxlib.vjp(luxlib.bias_activation, act, xl, bl)
    y_c, pullback_c = luxlib.vjp(luxlib.bias_activation, act, x, bias)
    np.testing.assert_array_equal(y, y_c)
    for g, g_c in zip(pullback(dyl)[1:], pullback_c(dy)[1:]):
        np.testing.assert_array_equal(g, g_c)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_gradients_finite_differences(act):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 4))
    bias = rng.standard_normal(3)
    with trace() as record:
        check_gradients(luxlib.bias_activation, (act, x, bias), expect=[1, 2])
        check_gradients(luxlib.fast_activation, (act, x[0, 0]), expect=[1])
    assert set(record) == {("bias_activation", "looped"), ("fast_activation", "looped")}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
def test_thread_count_independence(dtype, act, threads):
    x, bias, dy = make_inputs((2, 16, 33, 37), dtype, seed=4)
    results = []
    for n in (1, 2, 2):
        threads(n)
        y, pullback = luxlib.vjp(luxlib.bias_activation, act, x, bias)
        results.append((y, *pullback(dy)[1:]))
    (y1, dx1, db1), (y2, dx2, db2), again = results
    np.testing.assert_array_equal(y1, y2)  # elementwise: identical whatever the threads
    np.testing.assert_array_equal(dx1, dx2)
    for a, b in zip((y2, dx2, db2), again):  # deterministic for a given thread count
        np.testing.assert_array_equal(a, b)
    assert_db_close(db2, db1, dx1, 0)  # the reduction differs only by rounding


@pytest.mark.parametrize("op", ["fast", "bias"])
@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_inplace_variants(dtype, act, op):
    name = "fast_activation_" if op == "fast" else "bias_activation_"
    x, bias, dy = make_inputs((4, 5, 6), dtype, seed=5)
    f_ref, args_ref = call(op, act, x.copy(), bias)
    y_ref, grads_ref = reference(f_ref, args_ref, dy)
    # a writeable C-contiguous x is reused as the output
    xc = x.copy()
    f, args = call(op, act, xc, bias, name)
    with trace() as record:
        y = f(*args)
    assert record == [(name, "looped")]
    assert np.shares_memory(y, xc)
    assert_close(y, y_ref, pre_activation(op, x, bias))
    # other layouts are left alone
    for layout in ("F", "strided", "negstride", "readonly"):
        xl = with_layout(x, layout)
        f, args = call(op, act, xl, bias, name)
        y = f(*args)
        assert not np.shares_memory(y, xl)
        np.testing.assert_array_equal(xl, x)
        assert_close(y, y_ref, pre_activation(op, x, bias))
    # under vjp x is reused only when the backward pass does not read it
    xc = x.copy()
    f, args = call(op, act, xc, bias, name)
    y, pullback = luxlib.vjp(f, *args)
    assert np.shares_memory(y, xc) == act.output_only
    if not act.output_only:
        np.testing.assert_array_equal(xc, x)
    grads = pullback(dy)
    assert_close(y, y_ref, pre_activation(op, x, bias))
    assert_close(grads[1], grads_ref[1], pre_activation(op, x, bias))
    if op == "bias":
        assert_db_close(grads[2], grads_ref[2], grads_ref[1], pre_activation(op, x, bias))


@pytest.mark.parametrize("op", ["fast_activation", "bias_activation"])
@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
def test_backward_keeps_only_what_it_reads(act, op):
    x, bias, _ = make_inputs((3, 4), np.float64, seed=6)
    kwargs = {"act": act, "x": x} if op == "fast_activation" else {"act": act, "x": x, "bias": bias}
    alive = weakref.ref(x)
    y, pullback = _REGISTRY[(op, "looped")].vjp(**kwargs)
    del x, kwargs
    gc.collect()
    # output-only activations keep y alone; the others keep x
    assert (alive() is None) == act.output_only


@pytest.mark.parametrize(
    "shape, channels", [((0,), 0), ((0, 3), 3), ((0, 3, 4), 3), ((2, 0), 0), ((2, 3, 0), 3)], ids=str
)
@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_empty(dtype, act, shape, channels):
    x = np.ones(shape, dtype)
    bias = np.ones(channels, dtype)
    with trace() as record:
        y, pullback = luxlib.vjp(luxlib.bias_activation, act, x, bias)
        _, dx, db = pullback(np.ones(shape, dtype))
        y_fast = luxlib.fast_activation(act, x)
    assert record == [("bias_activation", "looped"), ("fast_activation", "looped")]
    assert y.shape == dx.shape == y_fast.shape == shape and y.dtype == dtype
    np.testing.assert_array_equal(db, np.zeros(channels, dtype))


def test_user_activation_falls_back_to_generic():
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    bias = np.arange(4.0)
    double = lambda v: 2 * v  # noqa: E731
    with trace() as record:
        y = luxlib.fast_activation(double, x)
    assert record == [("fast_activation", "generic")]
    np.testing.assert_array_equal(y, 2 * x)
    cube = activations.register("looped_test_cube", lambda v: v**3, lambda v: 3 * v**2)
    with trace() as record, luxlib.backend("looped"):
        y, pullback = luxlib.vjp(luxlib.bias_activation, cube, x, bias)
        _, dx, db = pullback(np.ones_like(y))
    assert record == [("bias_activation", "generic")]
    np.testing.assert_allclose(y, (x + bias) ** 3)
    np.testing.assert_allclose(dx, 3 * (x + bias) ** 2)
    np.testing.assert_allclose(db, np.sum(3 * (x + bias) ** 2, axis=0))


def test_kernel_table_agrees_with_activations():
    assert kernels.N_ACTIVATIONS == len(activations.ACTIVATIONS)
    for act in activations.ACTIVATIONS.values():
        assert kernels.output_only(act.id) == act.output_only, act.name


@pytest.mark.parametrize("act_id", [-1, 26])
def test_kernel_rejects_unknown_ids(act_id):
    x = np.zeros((1, 2, 3))
    with pytest.raises(ValueError, match="unknown activation id"):
        kernels.forward(act_id, 0.0, x, None, np.empty_like(x))
    with pytest.raises(ValueError, match="unknown activation id"):
        kernels.output_only(act_id)


def test_kernel_rejects_mismatched_shapes():
    x = np.zeros((1, 2, 3))
    with pytest.raises(ValueError, match=r"y must have shape \(1, 2, 3\), got \(1, 3, 2\)"):
        kernels.forward(1, 0.0, x, None, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="bias must have length 2, got 3"):
        kernels.forward(1, 0.0, x, np.zeros(3), np.empty_like(x))
    with pytest.raises(ValueError, match="db must have length 2, got 1"):
        kernels.backward(7, 0.0, x, None, x, np.empty_like(x), np.zeros(1))
