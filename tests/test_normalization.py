"""batchnorm, groupnorm, instancenorm, layernorm: forward vs NumPy formulas, running
statistics, gradients vs finite differences, layouts, empty batches, errors, properties."""

import gc
import weakref

import numpy as np
import pytest
from _helpers import (
    REFERENCE_ACTS,
    ATOL,
    BACKENDS,
    FLOAT_DTYPES,
    LAYOUTS,
    RTOL,
    assert_unchanged,
    backend_ctx,
    check_gradients,
    snapshot,
    with_layout,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import luxlib
from luxlib import activations, batchnorm, groupnorm, instancenorm, layernorm
from luxlib._dispatch import trace

# activations with independent formulas, from tests/_helpers.py
ACTS = {name: REFERENCE_ACTS[name] for name in ("identity", "relu", "tanh", "gelu", "swish", "leakyrelu_a0.2")}
GRAD_ACTS = ["identity", "relu", "gelu", "leakyrelu_a0.2"]

# float16 computes its statistics in float16, so a normalized value carries a few ulp
TOL = {np.float16: (1e-2, 1e-2), np.float32: (RTOL[np.float32], ATOL[np.float32]), np.float64: (1e-10, 1e-10)}

# batchnorm / instancenorm modes: (training, with running statistics)
MODES = [(True, True), (True, False), (False, True), (False, False)]


def default_eps(dtype):
    return np.finfo(dtype).eps ** (5 / 7)


def data(shape, dtype=np.float64, seed=7, loc=0.5, scale=2.0):  # seed 0 is check_gradients' dy
    return (np.random.default_rng(seed).standard_normal(shape) * scale + loc).astype(dtype)


def affine(c, dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 1.5, c).astype(dtype), rng.uniform(-1, 1, c).astype(dtype)


def running(c, dtype=np.float64, seed=2):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, c).astype(dtype), rng.uniform(0.5, 2, c).astype(dtype)


def assert_close(y, expected, dtype):
    rtol, atol = TOL[dtype]
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=rtol, atol=atol)


def f64(a):
    return None if a is None else np.asarray(a, np.float64)


def channel(v, ndim):
    """A (C,) array shaped to broadcast along axis 1 of an ndim-array."""
    return 1.0 if v is None else f64(v).reshape((1, -1) + (1,) * (ndim - 2))


def ref_per_channel(x, scale, bias, mean, var, eps, f):
    """act((x - mean) / sqrt(var + eps) * scale + bias), everything broadcast along axis 1."""
    x = f64(x)
    z = (x - mean) / np.sqrt(var + eps) * channel(scale, x.ndim)
    return f(z if bias is None else z + channel(bias, x.ndim))


def ref_batchnorm(x, scale, bias, rm, rv, training, eps, m=0.1, f=lambda z: z):
    """(y, new running stats) from the formulas in SPEC."""
    x64 = f64(x)
    axes = (0,) + tuple(range(2, x.ndim))
    if rm is not None and not training:
        return ref_per_channel(x, scale, bias, channel(rm, x.ndim), channel(rv, x.ndim), eps, f), (rm, rv)
    mean, var = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    y = ref_per_channel(x, scale, bias, mean, var, eps, f)
    if rm is None:
        return y, None
    unbiased = x64.var(axis=axes, ddof=1)
    return y, ((1 - m) * f64(rm) + m * mean.reshape(-1), (1 - m) * f64(rv) + m * unbiased)


def ref_instancenorm(x, scale, bias, rm, rv, training, eps, m=0.1, f=lambda z: z):
    x64 = f64(x)
    axes = tuple(range(2, x.ndim))
    if rm is not None and not training:
        return ref_per_channel(x, scale, bias, channel(rm, x.ndim), channel(rv, x.ndim), eps, f), (rm, rv)
    mean, var = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    y = ref_per_channel(x, scale, bias, mean, var, eps, f)
    if rm is None:
        return y, None
    unbiased = x64.var(axis=axes, ddof=1).mean(axis=0)
    return y, ((1 - m) * f64(rm) + m * x64.mean(axis=axes).mean(axis=0), (1 - m) * f64(rv) + m * unbiased)


def ref_groupnorm(x, scale, bias, groups, eps, f=lambda z: z):
    """Loop over samples and groups of consecutive channels."""
    x64 = f64(x)
    z = np.empty_like(x64)
    cg = x.shape[1] // groups
    for n in range(x.shape[0]):
        for g in range(groups):
            block = x64[n, g * cg : (g + 1) * cg]
            z[n, g * cg : (g + 1) * cg] = (block - block.mean()) / np.sqrt(block.var() + eps)
    z = z * channel(scale, x.ndim)
    return f(z if bias is None else z + channel(bias, x.ndim))


def ref_layernorm(x, scale, bias, axes, eps, f=lambda z: z):
    x64 = f64(x)
    mean, var = x64.mean(axis=axes, keepdims=True), x64.var(axis=axes, keepdims=True)
    z = (x64 - mean) / np.sqrt(var + eps)
    z = z if scale is None else z * f64(scale)
    return f(z if bias is None else z + f64(bias))


# ---------------------------------------------------------------- batchnorm

BN_SHAPES = [(6, 3), (3, 2, 4), (2, 3, 2, 2), (2, 2, 2, 2, 2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"training={m[0]},running={m[1]}")
@pytest.mark.parametrize("with_affine", [True, False])
def test_batchnorm_forward(backend, dtype, shape, mode, with_affine):
    training, with_running = mode
    c = shape[1]
    x = data(shape, dtype)
    scale, bias = affine(c, dtype) if with_affine else (None, None)
    rm, rv = running(c, dtype) if with_running else (None, None)
    before = snapshot(x, scale, bias, rm, rv)
    with backend_ctx(backend):
        y, stats = batchnorm(x, scale, bias, rm, rv, training, momentum=0.3)
    y_ref, stats_ref = ref_batchnorm(x, scale, bias, rm, rv, training, default_eps(dtype), m=0.3)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert_unchanged(before, (x, scale, bias, rm, rv))
    if stats_ref is None:
        assert stats is None
    else:
        assert isinstance(stats, luxlib.api.normalization.NormStats)
        for got, want, old in zip(stats, stats_ref, (rm, rv)):
            assert got.shape == (c,) and got.dtype == dtype
            assert_close(got, f64(want), dtype)
            if training:
                assert got is not old  # new arrays, the inputs untouched


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_activations(act, training):
    x = data((4, 3, 2))
    scale, bias = affine(3)
    rm, rv = running(3)
    y, _ = batchnorm(x, scale, bias, rm, rv, training, ACTS[act][0], epsilon=1e-3)
    assert_close(y, ref_batchnorm(x, scale, bias, rm, rv, training, 1e-3, f=ACTS[act][1])[0], np.float64)


def test_batchnorm_running_stats_values():
    x = np.array([[1.0, 10.0], [3.0, 30.0], [5.0, 20.0]])
    rm, rv = np.array([0.0, 1.0]), np.array([1.0, 2.0])
    _, (rm2, rv2) = batchnorm(x, None, None, rm, rv, True, momentum=0.25)
    # per channel: mean (3, 20), unbiased variance (4, 100)
    np.testing.assert_allclose(rm2, [0.75 * 0 + 0.25 * 3, 0.75 * 1 + 0.25 * 20])
    np.testing.assert_allclose(rv2, [0.75 * 1 + 0.25 * 4, 0.75 * 2 + 0.25 * 100])
    _, same = batchnorm(x, None, None, rm, rv, True, momentum=0.0)
    np.testing.assert_array_equal(same.running_mean, rm)
    _, batch = batchnorm(x, None, None, rm, rv, True, momentum=1.0)
    np.testing.assert_allclose(batch.running_var, [4, 100])


def test_batchnorm_training_none():
    """training=None is inference outside luxlib.vjp and training inside it."""
    x = data((5, 3))
    rm, rv = running(3)
    y, stats = batchnorm(x, None, None, rm, rv, None)
    y_inf, _ = batchnorm(x, None, None, rm, rv, False)
    np.testing.assert_array_equal(y, y_inf)
    assert stats.running_mean is rm  # inference hands the running statistics back unchanged
    (y, stats), _ = luxlib.vjp(batchnorm, x, None, None, rm, rv, None)
    y_train, stats_train = batchnorm(x, None, None, rm, rv, True)
    np.testing.assert_array_equal(y, y_train)
    np.testing.assert_array_equal(stats.running_var, stats_train.running_var)
    assert not np.allclose(y, y_inf)


# ---------------------------------------------------------------- instancenorm

IN_SHAPES = [(3, 2, 4), (2, 3, 2, 3), (2, 2, 2, 2, 2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", IN_SHAPES, ids=str)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"training={m[0]},running={m[1]}")
@pytest.mark.parametrize("with_affine", [True, False])
def test_instancenorm_forward(backend, dtype, shape, mode, with_affine):
    training, with_running = mode
    c = shape[1]
    x = data(shape, dtype)
    scale, bias = affine(c, dtype) if with_affine else (None, None)
    rm, rv = running(c, dtype) if with_running else (None, None)
    before = snapshot(x, scale, bias, rm, rv)
    with backend_ctx(backend):
        y, stats = instancenorm(x, scale, bias, training, running_mean=rm, running_var=rv, momentum=0.2)
    y_ref, stats_ref = ref_instancenorm(x, scale, bias, rm, rv, training, default_eps(dtype), m=0.2)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, y_ref, dtype)
    assert_unchanged(before, (x, scale, bias, rm, rv))
    if stats_ref is None:
        assert stats is None
    else:
        for got, want in zip(stats, stats_ref):
            assert got.shape == (c,) and got.dtype == dtype
            assert_close(got, f64(want), dtype)


@pytest.mark.parametrize("act", list(ACTS))
def test_instancenorm_activations(act):
    x = data((2, 3, 4))
    scale, bias = affine(3)
    y, stats = instancenorm(x, scale, bias, True, ACTS[act][0], 1e-4)
    assert stats is None
    assert_close(y, ref_instancenorm(x, scale, bias, None, None, True, 1e-4, f=ACTS[act][1])[0], np.float64)


def test_instancenorm_running_stats_values():
    # two samples, one channel, spatial size 2: means (1, 5), unbiased variances (2, 8)
    x = np.array([[[0.0, 2.0]], [[3.0, 7.0]]])
    _, (rm, rv) = instancenorm(x, None, None, True, running_mean=np.array([1.0]), running_var=np.array([1.0]))
    np.testing.assert_allclose(rm, [0.9 * 1 + 0.1 * 3])
    np.testing.assert_allclose(rv, [0.9 * 1 + 0.1 * 5])


# ---------------------------------------------------------------- groupnorm

GN_CASES = [((4, 6), 1), ((4, 6), 3), ((4, 6), 6), ((2, 6, 3), 2), ((2, 4, 2, 2), 4), ((1, 4, 2, 1, 2), 2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape, groups", GN_CASES, ids=str)
@pytest.mark.parametrize("with_affine", [True, False])
def test_groupnorm_forward(backend, dtype, shape, groups, with_affine):
    x = data(shape, dtype)
    scale, bias = affine(shape[1], dtype) if with_affine else (None, None)
    before = snapshot(x, scale, bias)
    with backend_ctx(backend):
        y = groupnorm(x, scale, bias, groups)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, ref_groupnorm(x, scale, bias, groups, default_eps(dtype)), dtype)
    assert_unchanged(before, (x, scale, bias))


@pytest.mark.parametrize("act", list(ACTS))
def test_groupnorm_activations(act):
    x = data((2, 4, 3))
    scale, bias = affine(4)
    y = groupnorm(x, scale, bias, 2, ACTS[act][0], 1e-4)
    assert_close(y, ref_groupnorm(x, scale, bias, 2, 1e-4, f=ACTS[act][1]), np.float64)


# ---------------------------------------------------------------- layernorm

DEFAULT = luxlib.api.normalization.ALL_BUT_BATCH
# (x shape, scale/bias shape or None, dims, reduction axes SPEC gives for them)
LN_CASES = [
    ((3, 4), (4,), DEFAULT, (1,)),
    ((2, 3, 4), (3, 4), DEFAULT, (1, 2)),
    ((2, 3, 4), (4,), -1, (2,)),
    ((2, 3, 4), (3, 1), (1, 2), (1, 2)),
    ((2, 3, 4), (2, 3, 4), "all", (0, 1, 2)),
    ((2, 3, 4), (2, 1, 4), [0, -1], (0, 2)),
    ((5,), (5,), DEFAULT, (0,)),  # a 1-D x is one sample
    ((2, 3, 2, 2), None, (1, 3), (1, 3)),
    ((2, 3, 4), (4,), range(1, 3), (1, 2)),
    ((2, 2, 2, 2, 2), (2, 2, 2, 2), DEFAULT, (1, 2, 3, 4)),
    # dims=None: scale/bias of rank M align with the trailing M axes, statistics
    # over the trailing x.ndim - M axes (LuxLib's 1:(N-M), mirrored)
    ((2, 3, 4, 5), (5,), None, (1, 2, 3)),
    ((2, 3, 4, 5), (4, 5), None, (2, 3)),
    ((2, 3, 4, 5), (3, 1, 5), None, (3,)),
    ((3, 4), (4,), None, (1,)),
    ((2, 3, 4), (), None, (0, 1, 2)),  # M = 0: every axis
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", LN_CASES, ids=str)
def test_layernorm_forward(backend, dtype, case):
    shape, affine_shape, dims, axes = case
    x = data(shape, dtype)
    rng = np.random.default_rng(3)
    scale = None if affine_shape is None else rng.uniform(0.5, 1.5, affine_shape).astype(dtype)
    bias = None if affine_shape is None else rng.uniform(-1, 1, affine_shape).astype(dtype)
    before = snapshot(x, scale, bias)
    with backend_ctx(backend):
        y = layernorm(x, scale, bias, dims=dims)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, ref_layernorm(x, scale, bias, axes, default_eps(dtype)), dtype)
    assert_unchanged(before, (x, scale, bias))


def test_layernorm_default_dims_are_all_but_batch():
    x = data((2, 3, 4))
    np.testing.assert_array_equal(layernorm(x, None, None), layernorm(x, None, None, dims=(1, 2)))
    assert repr(DEFAULT) == "<all axes but 0>"


@pytest.mark.parametrize("which", ["scale", "bias"])
def test_layernorm_dims_none_with_one_affine_array(which):
    x = data((2, 3, 4))
    v = affine(4)[0 if which == "scale" else 1]
    scale, bias = (v, None) if which == "scale" else (None, v)
    y = layernorm(x, scale, bias, dims=None)
    assert_close(y, ref_layernorm(x, scale, bias, (1, 2), default_eps(np.float64)), np.float64)


@pytest.mark.parametrize("act", list(ACTS))
def test_layernorm_activations(act):
    x = data((3, 4))
    scale, bias = affine(4)
    y = layernorm(x, scale, bias, ACTS[act][0], epsilon=1e-4)
    assert_close(y, ref_layernorm(x, scale, bias, (1,), 1e-4, f=ACTS[act][1]), np.float64)


# ---------------------------------------------------------------- all four

CALLS = {
    "batchnorm": lambda x, s, b, **kw: batchnorm(x, s, b, *running(x.shape[1], x.dtype), True, "gelu", **kw)[0],
    "batchnorm_inference": lambda x, s, b, **kw: batchnorm(x, s, b, *running(x.shape[1], x.dtype), False, **kw)[0],
    "instancenorm": lambda x, s, b, **kw: instancenorm(x, s, b, True, "tanh", **kw)[0],
    "groupnorm": lambda x, s, b, **kw: groupnorm(x, s, b, 2, "relu", **kw),
    "layernorm": lambda x, s, b, **kw: layernorm(x, s, b, "swish", **kw),
}


@pytest.mark.parametrize("op", list(CALLS))
@pytest.mark.parametrize("arg, layout", [(a, lay) for a in ("x", "scale") for lay in LAYOUTS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layouts(op, arg, layout, dtype):
    x = data((3, 4, 2, 3), dtype)
    scale, bias = affine(4, dtype)
    if op == "layernorm":
        scale, bias = data((4, 2, 3), dtype, seed=5), bias[:, None, None]
    expected = CALLS[op](x, scale, bias)
    args = {"x": x, "scale": scale}
    args[arg] = with_layout(args[arg], layout)
    y = CALLS[op](args["x"], args["scale"], bias)
    np.testing.assert_allclose(y, expected, rtol=10 * RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_running_stats_layouts(layout):
    x = data((4, 3, 2))
    rm, rv = running(3)
    expected = batchnorm(x, None, None, rm, rv, True)
    got = batchnorm(x, None, None, with_layout(rm, layout), with_layout(rv, layout), True)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-12)
    np.testing.assert_allclose(np.stack(got[1]), np.stack(expected[1]), rtol=1e-12)
    got = batchnorm(x, None, None, with_layout(rm, layout), with_layout(rv, layout), False)[0]
    np.testing.assert_allclose(got, batchnorm(x, None, None, rm, rv, False)[0], rtol=1e-12)


@pytest.mark.parametrize("op", ["batchnorm", "groupnorm", "instancenorm", "layernorm"])
def test_generic_implementation_runs(op):
    x = data((2, 4, 3))
    with luxlib.backend("generic"), trace() as record:
        CALLS[op](x, None, None)
    assert record == [(op, "generic")]


@pytest.mark.parametrize(
    "dtypes, out",
    [
        ((np.float32, np.float64, None), np.float64),
        ((np.float16, None, None), np.float16),
        ((np.float16, np.float32, np.float16), np.float32),
    ],
    ids=str,
)
def test_mixed_dtypes_promote(dtypes, out):
    x = data((4, 2, 3), dtypes[0])
    scale, bias = (None if d is None else v.astype(d) for d, v in zip(dtypes[1:], affine(2)))
    rm, rv = running(2, np.float32)
    y, stats = batchnorm(x, scale, bias, rm, rv, True)
    assert y.dtype == np.result_type(out, np.float32) and stats.running_mean.dtype == y.dtype
    assert groupnorm(x, scale, bias, 2).dtype == out
    assert instancenorm(x, scale, bias, True)[0].dtype == out
    assert layernorm(x, scale if scale is None else scale[:, None], None).dtype == out
    y, pullback = luxlib.vjp(groupnorm, x, scale, bias, 1)
    for g, a in zip(pullback(np.ones(y.shape)), (x, scale, bias)):
        assert (g is None) if a is None else (g.shape == a.shape and g.dtype == a.dtype)


def test_default_epsilon():
    x = data((3, 4), np.float32)
    assert abs(default_eps(np.float32) - 1.1337e-5) < 1e-9
    np.testing.assert_array_equal(layernorm(x, None, None), layernorm(x, None, None, epsilon=default_eps(np.float32)))
    # a large epsilon shrinks the output: the default is indeed used and tiny
    assert np.abs(layernorm(x, None, None, epsilon=100.0)).max() < 0.5


# empty batches: empty y of x's shape, running statistics kept (copies), as PyTorch does
EMPTY = [(0, 3), (0, 3, 2), (2, 3, 0), (0, 4, 2, 2), (1, 0)]


@pytest.mark.parametrize("shape", EMPTY, ids=str)
@pytest.mark.parametrize("training", [True, False])
def test_empty_batchnorm(shape, training):
    x = np.zeros(shape)
    scale, bias = affine(shape[1])
    rm, rv = running(shape[1])
    with np.errstate(all="raise"):
        (y, stats), pullback = luxlib.vjp(batchnorm, x, scale, bias, rm, rv, training)
        dx, dscale, dbias, *rest = pullback(np.zeros(shape))
    assert y.shape == shape
    np.testing.assert_array_equal(stats.running_mean, rm)
    np.testing.assert_array_equal(stats.running_var, rv)
    assert dx.shape == shape
    np.testing.assert_array_equal(dscale, 0)
    np.testing.assert_array_equal(dbias, 0)
    assert rest == [None, None, None]
    y, stats = batchnorm(x, None, None, None, None, training)
    assert y.shape == shape and stats is None


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 4, 0), (0, 4, 2, 2)], ids=str)
def test_empty_others(shape):
    x = np.zeros(shape)
    scale, bias = affine(4)
    rm, rv = running(4)
    with np.errstate(all="raise"):
        y, stats = instancenorm(x, scale, bias, True, running_mean=rm, running_var=rv)
        assert y.shape == shape
        np.testing.assert_array_equal(stats.running_mean, rm)
        assert stats.running_mean is not rm
        assert groupnorm(x, scale, bias, 2).shape == shape
        for dims in (DEFAULT, (0,), "all"):
            y, pullback = luxlib.vjp(layernorm, x, None, bias.reshape((4,) + (1,) * (len(shape) - 2)), dims=dims)
            assert y.shape == shape and pullback(y)[0].shape == shape
        y, pullback = luxlib.vjp(groupnorm, x, scale, bias, 4)
        dx, dscale, dbias, _ = pullback(np.zeros(shape))
        assert dx.shape == shape and dscale.shape == (4,)
        np.testing.assert_array_equal(dbias, 0)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nan_and_inf_propagate():
    x = data((4, 3, 2))
    x[1, 0, 1] = np.nan
    y, _ = batchnorm(x, None, None, None, None, True)
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1:]).all()
    y = layernorm(x, None, None)
    assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2, 3]]).all()
    y = groupnorm(x, None, None, 3)
    assert np.isnan(y[1, 0]).all() and np.isfinite(y[1, 1:]).all()
    x[2, 1, 0] = np.inf
    y, _ = instancenorm(x, None, None, True)
    assert np.isnan(y[2, 1]).all() and np.isfinite(y[3]).all()


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("act", GRAD_ACTS)
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 2, 2)], ids=str)
@pytest.mark.parametrize("mode", MODES + [(None, True)], ids=lambda m: f"training={m[0]},running={m[1]}")
@pytest.mark.parametrize("affine_args", ["both", "scale", "none"])
def test_batchnorm_gradients(act, shape, mode, affine_args):
    training, with_running = mode
    x = data(shape)
    scale, bias = affine(shape[1])
    scale, bias = {"both": (scale, bias), "scale": (scale, None), "none": (None, None)}[affine_args]
    rm, rv = running(shape[1]) if with_running else (None, None)
    expect = [0] + [i for i, v in ((1, scale), (2, bias)) if v is not None]
    check_gradients(batchnorm, (x, scale, bias, rm, rv, training, ACTS[act][0]), expect=expect)


@pytest.mark.parametrize("act", GRAD_ACTS)
@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 2, 2, 3)], ids=str)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"training={m[0]},running={m[1]}")
def test_instancenorm_gradients(act, shape, mode):
    training, with_running = mode
    x = data(shape)
    scale, bias = affine(shape[1])
    rm, rv = running(shape[1]) if with_running else (None, None)
    kw = {"running_mean": rm, "running_var": rv}
    check_gradients(instancenorm, (x, scale, bias, training, ACTS[act][0]), kw, expect=[0, 1, 2])


@pytest.mark.parametrize("act", GRAD_ACTS)
@pytest.mark.parametrize("shape, groups", [((3, 6), 2), ((2, 4, 3), 1), ((2, 4, 3), 2), ((2, 4, 3), 4)], ids=str)
@pytest.mark.parametrize("with_affine", [True, False])
def test_groupnorm_gradients(act, shape, groups, with_affine):
    scale, bias = affine(shape[1]) if with_affine else (None, None)
    expect = [0, 1, 2] if with_affine else [0]
    check_gradients(groupnorm, (data(shape), scale, bias, groups, ACTS[act][0]), expect=expect)


@pytest.mark.parametrize("act", GRAD_ACTS)
@pytest.mark.parametrize("case", [c for c in LN_CASES if np.prod(c[0]) <= 40], ids=str)
def test_layernorm_gradients(act, case):
    shape, affine_shape, dims, _ = case
    rng = np.random.default_rng(4)
    scale = None if affine_shape is None else rng.uniform(0.5, 1.5, affine_shape)
    bias = None if affine_shape is None else rng.uniform(-1, 1, affine_shape)
    expect = [0] if affine_shape is None else [0, 1, 2]
    check_gradients(layernorm, (data(shape), scale, bias, ACTS[act][0], dims), expect=expect)


def test_pullback_gives_none_for_non_differentiable_arguments():
    x = data((4, 3, 2))
    rm, rv = running(3)
    (y, _), pullback = luxlib.vjp(batchnorm, x, *affine(3), rm, rv, True, "relu", 0.1, 1e-5)
    assert pullback(np.ones_like(y))[3:] == (None,) * 6
    y, pullback = luxlib.vjp(groupnorm, x, None, None, 3)
    assert pullback(np.ones_like(y))[1:] == (None, None, None)


def test_training_mode_gradient_sums_to_zero():
    """With batch statistics and no affine, y ignores shifts of x along the reduction axes."""
    x = data((4, 3, 2))
    (y, _), pullback = luxlib.vjp(batchnorm, x, None, None, None, None, True)
    dx = pullback(data(y.shape, seed=9))[0]
    np.testing.assert_allclose(dx.sum(axis=(0, 2)), 0, atol=1e-12)
    y, pullback = luxlib.vjp(layernorm, x, None, None)
    np.testing.assert_allclose(pullback(data(y.shape, seed=9))[0].sum(axis=(1, 2)), 0, atol=1e-12)


def _closure_arrays(fn, seen=None):
    """Every ndarray reachable through the closure cells of ``fn`` and the functions in them."""
    seen = set() if seen is None else seen
    found = []
    for cell in getattr(fn, "__closure__", None) or ():
        v = cell.cell_contents
        if isinstance(v, np.ndarray):
            found.append(v)
        elif callable(v) and id(v) not in seen:
            seen.add(id(v))
            found += _closure_arrays(v, seen)
    return found


@pytest.mark.parametrize("act, kept", [("relu", 1), ("gelu", 2), (None, 0)])
def test_vjp_keeps_only_what_the_pullback_needs(act, kept):
    """xhat and rstd (and scale), plus y for output-only activations, z and y otherwise; never x."""
    from luxlib._generic.normalization import layernorm_vjp

    x = data((3, 4))
    scale = affine(4)[0]
    y, pullback = layernorm_vjp(activations.get(act), x, scale, None, (1,), 1e-5)
    arrays = _closure_arrays(pullback)
    assert not any(a is x or np.shares_memory(a, x) for a in arrays)
    big = [a for a in arrays if a.shape == x.shape]  # xhat, then the activation's own
    assert len(big) == 1 + kept
    assert any(a is y for a in arrays) == (kept > 0)


@pytest.mark.parametrize("op", ["batchnorm", "groupnorm", "instancenorm", "layernorm"])
def test_generic_vjp_does_not_keep_x(op):
    """No generic pullback holds x, not even through a reshaped view of it."""
    x = data((4, 6, 5))
    scale, bias = affine(6)
    calls = {
        "batchnorm": lambda: luxlib.vjp(batchnorm, x, scale, bias, None, None, True, "relu"),
        "groupnorm": lambda: luxlib.vjp(groupnorm, x, scale, bias, 3, "relu"),
        "instancenorm": lambda: luxlib.vjp(instancenorm, x, scale, bias, True, "relu"),
        "layernorm": lambda: luxlib.vjp(layernorm, x, None, None, "relu", dims=(1, 2)),
    }
    alive = weakref.ref(x)
    with luxlib.backend("generic"):
        _, pullback = calls[op]()
    del x, calls
    gc.collect()
    assert alive() is None
    assert pullback(data((4, 6, 5), seed=3))[0].shape == (4, 6, 5)


# ---------------------------------------------------------------- errors


def _raises(exc, *patterns):
    return pytest.raises(exc, match="(?s)" + "".join(f"(?=.*{p})" for p in patterns))


X4 = data((2, 4, 3))
S4, B4 = affine(4)
M4, V4 = running(4)


@pytest.mark.parametrize(
    "call, exc, patterns",
    [
        # dtypes
        (lambda: batchnorm(X4.astype(int), None, None, None, None, True), TypeError, ("batchnorm", "x")),
        (lambda: groupnorm(X4.astype(complex), None, None, 2), TypeError, ("groupnorm", "x")),
        (lambda: instancenorm(X4 > 0, None, None, True), TypeError, ("instancenorm", "x")),
        (lambda: layernorm(X4, S4.astype(np.int32), None, dims=1), TypeError, ("layernorm", "scale")),
        (lambda: batchnorm(X4, None, None, M4.astype(int), V4, True), TypeError, ("batchnorm", "running_mean")),
        # ranks and lengths
        (lambda: batchnorm(X4[0, 0], None, None, None, None, True), ValueError, ("batchnorm", "x", r"\(3,\)")),
        (lambda: instancenorm(X4[0], None, None, True), ValueError, ("instancenorm", "x", r"\(4, 3\)")),
        (lambda: groupnorm(X4[0, 0], None, None, 1), ValueError, ("groupnorm", "x")),
        (
            lambda: batchnorm(X4, S4[:3], None, None, None, True),
            ValueError,
            ("batchnorm", "scale", r"\(4,\)", r"\(3,\)"),
        ),
        (lambda: batchnorm(X4, None, B4[:, None], None, None, True), ValueError, ("batchnorm", "bias")),
        (lambda: batchnorm(X4, None, None, M4, V4[:2], True), ValueError, ("batchnorm", "running_var", r"\(2,\)")),
        (lambda: instancenorm(X4, S4, B4[:2], True), ValueError, ("instancenorm", "bias", r"\(2,\)", r"\(4,\)")),
        (lambda: groupnorm(X4, S4[:1], None, 2), ValueError, ("groupnorm", "scale", r"\(1,\)")),
        # running statistics
        (lambda: batchnorm(X4, None, None, M4, None, False), ValueError, ("batchnorm", "running_mean", "only")),
        (lambda: batchnorm(X4, None, None, None, V4, True), ValueError, ("batchnorm", "running_var")),
        (lambda: instancenorm(X4, None, None, True, running_mean=M4), ValueError, ("instancenorm", "running_var")),
        (
            lambda: batchnorm(X4[:1, :, :1], None, None, M4, V4, True),
            ValueError,
            ("batchnorm", "1 value", r"\(1, 4, 1\)"),
        ),
        (
            lambda: instancenorm(X4[..., :1], None, None, True, running_mean=M4, running_var=V4),
            ValueError,
            ("instancenorm", "1 value"),
        ),
        (lambda: batchnorm(X4, None, None, M4, V4, True, momentum=1.5), ValueError, ("batchnorm", "momentum")),
        (lambda: batchnorm(X4, None, None, M4, V4, True, momentum=np.nan), ValueError, ("batchnorm", "momentum")),
        (lambda: instancenorm(X4, None, None, True, momentum=-0.1), ValueError, ("instancenorm", "momentum")),
        (lambda: batchnorm(X4, None, None, M4, V4, True, momentum="0.1"), TypeError, ("batchnorm", "momentum")),
        (lambda: batchnorm(X4, None, None, None, None, "yes"), TypeError, ("batchnorm", "training")),
        (lambda: instancenorm(X4, None, None, 1), TypeError, ("instancenorm", "training")),
        # groups
        (lambda: groupnorm(X4, None, None, 3), ValueError, ("groupnorm", "groups", "4")),
        (lambda: groupnorm(X4, None, None, 0), ValueError, ("groupnorm", "groups")),
        (lambda: groupnorm(X4, None, None, -2), ValueError, ("groupnorm", "groups")),
        (lambda: groupnorm(X4, None, None, 2.0), TypeError, ("groupnorm", "groups")),
        (lambda: groupnorm(X4, None, None, True), TypeError, ("groupnorm", "groups")),
        # layernorm dims and broadcasting
        (lambda: layernorm(X4, None, None, dims=None), ValueError, ("layernorm", "dims", "None")),
        (lambda: layernorm(X4, X4[:1], None, dims=None), ValueError, ("layernorm", r"\(2, 4, 3\)", "rank 3")),
        (lambda: layernorm(X4, X4[0], X4[0, 0], dims=None), ValueError, ("layernorm", "same rank")),
        (lambda: layernorm(X4, S4, None, dims=1), ValueError, ("layernorm", "scale", r"\(2, 4, 3\)", r"\(4,\)")),
        (lambda: layernorm(X4, None, X4[None], dims=1), ValueError, ("layernorm", "bias", r"\(1, 2, 4, 3\)")),
        (lambda: layernorm(X4, None, None, dims=(1, 3)), ValueError, ("layernorm", "dims", r"\(2, 4, 3\)")),
        (lambda: layernorm(X4, None, None, dims=(1, -2)), ValueError, ("layernorm", "dims", "repeat")),
        (lambda: layernorm(X4, None, None, dims="last"), ValueError, ("layernorm", "dims")),
        (lambda: layernorm(X4, None, None, dims=1.0), TypeError, ("layernorm", "dims")),
        (lambda: layernorm(X4[0, 0, 0], None, None), ValueError, ("layernorm", "x")),
        # epsilon, act
        (lambda: layernorm(X4, None, None, epsilon=-1.0), ValueError, ("layernorm", "epsilon")),
        (lambda: groupnorm(X4, None, None, 2, epsilon="tiny"), TypeError, ("groupnorm", "epsilon")),
        (lambda: batchnorm(X4, None, None, None, None, True, "no_such_act"), ValueError, ("no_such_act",)),
    ],
)
def test_errors(call, exc, patterns):
    with trace() as record, _raises(exc, *patterns):
        call()
    assert record == []  # raised before any implementation ran


def test_unregistered_activation_runs_forward_but_not_backward():
    cube = lambda z: z**3  # noqa: E731
    x = data((3, 4))
    expected = ref_layernorm(x, None, None, (1,), default_eps(np.float64)) ** 3
    np.testing.assert_allclose(layernorm(x, None, None, cube), expected)
    with pytest.raises(TypeError, match="register"):
        luxlib.vjp(layernorm, x, None, None, cube)


# ---------------------------------------------------------------- properties


@st.composite
def grouped_input(draw):
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))
    shape = (draw(st.integers(1, 3)), c, *spatial)
    loc = draw(st.floats(-100, 100))
    spread = draw(st.floats(0.01, 100))
    return data(shape, seed=draw(st.integers(0, 2**16)), loc=loc, scale=spread), groups


@settings(max_examples=40, deadline=None)
@given(grouped_input())
def test_property_groupnorm_standardizes_each_group(args):
    x, groups = args
    eps = 1e-5
    y = groupnorm(x, None, None, groups, epsilon=eps)
    xg = x.reshape(x.shape[0], groups, -1)
    yg = y.reshape(xg.shape)
    var = xg.var(axis=2)
    np.testing.assert_allclose(yg.mean(axis=2), 0, atol=1e-9)
    np.testing.assert_allclose(yg.var(axis=2), var / (var + eps), rtol=1e-9, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(grouped_input(), st.data())
def test_property_layernorm_invariant_to_affine_change_of_x(args, draw):
    x, _ = args
    axes = tuple(sorted(draw.draw(st.sets(st.integers(0, x.ndim - 1), min_size=1))))
    a = draw.draw(st.floats(0.5, 4))
    b = draw.draw(st.floats(-10, 10))
    with np.errstate(divide="ignore", invalid="ignore"):  # constant slices give 0/0
        y = layernorm(x, None, None, dims=axes, epsilon=0.0)
        y2 = layernorm(a * x + b, None, None, dims=axes, epsilon=0.0)
    spread = x.std(axis=axes, keepdims=True)
    np.testing.assert_allclose(np.where(spread > 0, y2 - y, 0), 0, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(grouped_input(), st.sampled_from(GRAD_ACTS), st.booleans())
def test_property_gradients_match_finite_differences(args, act, training):
    x, groups = args
    x = data(x.shape, seed=int(abs(x.flat[0]) * 1000) % 1000)  # O(1) values for finite differences
    c = x.shape[1]
    scale, bias = affine(c)
    # a moderate epsilon keeps d(y)/dx well above finite-difference noise for groups of 2
    check_gradients(groupnorm, (x, scale, bias, groups, ACTS[act][0]), {"epsilon": 0.01})
    if np.prod(x.shape[:1] + x.shape[2:]) > 1:
        check_gradients(batchnorm, (x, scale, bias, *running(c), training, ACTS[act][0]), {"epsilon": 0.01})
