"""fused_dense_bias_activation: forward vs NumPy formulas, gradients, layouts, errors."""

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

import luxlib
from luxlib import fused_dense_bias_activation as dense

# activations with independent formulas, from tests/_helpers.py
ACTS = {name: REFERENCE_ACTS[name] for name in ("identity", "relu", "gelu", "leakyrelu_a0.2", "softplus")}

# (batch, in, out); batch None means a 1-D x (one sample)
SHAPES = [(4, 5, 3), (1, 3, 2), (None, 4, 3), (0, 4, 3)]


def make(batch, n_in, n_out, dtype=np.float64, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, (n_out, n_in)).astype(dtype)
    x = rng.uniform(-1, 1, (n_in,) if batch is None else (batch, n_in)).astype(dtype)
    b = rng.uniform(-1, 1, n_out).astype(dtype) if bias else None
    return w, x, b


def reference(f, w, x, b):
    """act(x @ w.T + b) in float64, written with einsum."""
    w64, x64 = np.asarray(w, np.float64), np.asarray(x, np.float64)
    z = np.einsum("oi,...i->...o", w64, x64)
    if b is not None:
        z = z + np.asarray(b, np.float64)
    return f(z)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward(backend, dtype, shape, act, with_bias):
    w, x, b = make(*shape, dtype=dtype, bias=with_bias)
    before = snapshot(w, x, b)
    with backend_ctx(backend):
        y = dense(ACTS[act][0], w, x, b)
    batch, _, n_out = shape
    assert y.shape == ((n_out,) if batch is None else (batch, n_out))
    assert y.dtype == dtype
    np.testing.assert_allclose(
        y.astype(np.float64), reference(ACTS[act][1], w, x, b), rtol=RTOL[dtype], atol=ATOL[dtype]
    )
    assert_unchanged(before, (w, x, b))


def test_generic_implementation_runs():
    w, x, b = make(2, 3, 4)
    with luxlib.backend("generic"), luxlib._dispatch.trace() as record:
        dense("relu", w, x, b)
    assert record == [("fused_dense_bias_activation", "generic")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "arg, layout",
    [(a, lay) for a in ("weight", "x", "bias") for lay in LAYOUTS] + [("weight", "transposed"), ("x", "transposed")],
)
def test_layouts(backend, dtype, arg, layout):
    w, x, b = make(5, 4, 3, dtype=dtype)
    args = {"weight": w, "x": x, "bias": b}
    if layout == "transposed":  # a transposed view: w.T of an (in, out) array, x.T of (in, batch)
        args[arg] = np.ascontiguousarray(args[arg].T).T
        assert not args[arg].flags.c_contiguous
    else:
        args[arg] = with_layout(args[arg], layout)
    with backend_ctx(backend):
        y = dense("gelu", **args)
    np.testing.assert_allclose(y, reference(ACTS["gelu"][1], w, x, b), rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize(
    "dtypes",
    [(np.float32, np.float64, np.float32), (np.float16, np.float32, None), (np.float64, np.float16, np.float16)],
    ids=str,
)
def test_mixed_dtypes_promote(dtypes):
    args = [None if d is None else a.astype(d) for a, d in zip(make(3, 4, 2), dtypes)]
    out_dtype = np.result_type(*[d for d in dtypes if d is not None])
    y, pullback = luxlib.vjp(dense, "tanh", *args)
    assert y.dtype == out_dtype
    np.testing.assert_allclose(y, reference(np.tanh, *args), rtol=RTOL[out_dtype.type], atol=ATOL[out_dtype.type])
    grads = pullback(np.ones_like(y))
    assert grads[0] is None
    for g, a in zip(grads[1:], args):
        if a is None:
            assert g is None
        else:
            assert g.shape == a.shape and g.dtype == a.dtype


@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("shape", [(3, 4, 2), (None, 4, 3)], ids=str)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradients(act, shape, with_bias):
    w, x, b = make(*shape, bias=with_bias, seed=1)
    before = snapshot(w, x, b)
    check_gradients(dense, (ACTS[act][0], w, x, b), expect=[1, 2, 3] if with_bias else [1, 2])
    assert_unchanged(before, (w, x, b))


def test_pullback_matches_formulas():
    """dx = g @ W, dW = g.T @ x, db = sum_batch g, with g = dy * act'(z)."""
    w, x, b = make(4, 3, 2, seed=2)
    y, pullback = luxlib.vjp(dense, "softplus", w, x, b)
    dy = np.random.default_rng(3).standard_normal(y.shape)
    z = x @ w.T + b
    g = dy / (1 + np.exp(-z))
    _, dw, dx, db = pullback(dy)
    np.testing.assert_allclose(dw, g.T @ x, rtol=1e-12)
    np.testing.assert_allclose(dx, g @ w, rtol=1e-12)
    np.testing.assert_allclose(db, g.sum(axis=0), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vjp_does_not_keep_bias(backend):
    """The pullback needs weight and x (and the activation's output), never the bias."""
    w, x, b = make(4, 3, 2, seed=2)
    alive = weakref.ref(b)
    with backend_ctx(backend):
        _, pullback = luxlib.vjp(dense, "gelu", w, x, b)
    del b
    gc.collect()
    assert alive() is None
    assert pullback(np.ones((4, 2)))[3].shape == (2,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_empty_batch(backend, with_bias):
    w, x, b = make(0, 4, 3, bias=with_bias)
    with backend_ctx(backend):
        y, pullback = luxlib.vjp(dense, "gelu", w, x, b)
    assert y.shape == (0, 3)
    _, dw, dx, db = pullback(np.zeros((0, 3)))
    assert dx.shape == (0, 4)
    np.testing.assert_array_equal(dw, np.zeros((3, 4)))
    if with_bias:
        np.testing.assert_array_equal(db, np.zeros(3))
    else:
        assert db is None


@pytest.mark.parametrize("act", ["identity", "relu"])
def test_nan_inf_propagate(act):
    w, x, b = make(3, 4, 2)
    x[0, 0] = np.nan
    x[1, 0] = np.inf
    w[:, 0] = 1.0
    y = dense(ACTS[act][0], w, x, b)
    assert np.isnan(y[0]).all()
    assert np.isposinf(y[1]).all()
    assert np.isfinite(y[2]).all()


def test_array_likes():
    y = dense(None, [[1, 2], [3, 4]], [[1, 1]], [0, 1])
    np.testing.assert_array_equal(y, [[3.0, 8.0]])
    assert y.dtype == np.float64


def test_unregistered_callable_runs_forward_but_has_no_reverse():
    w, x, b = make(3, 4, 2)
    np.testing.assert_allclose(dense(lambda z: z * z, w, x, b), reference(np.square, w, x, b), rtol=1e-12)
    with pytest.raises(TypeError, match="no derivative"):
        luxlib.vjp(dense, lambda z: z * z, w, x, b)


W, X, B = make(3, 4, 2)
NAME = "fused_dense_bias_activation: "
ERRORS = [
    # (act, weight, x, bias), exception, fragments the message must contain
    ((None, W[0], X, B), ValueError, [NAME, "weight", "(4,)"]),
    ((None, W[None], X, B), ValueError, [NAME, "weight", "(1, 2, 4)"]),
    ((None, W, X[0, 0], B), ValueError, [NAME, "x", "()"]),
    ((None, W, X[None], B), ValueError, [NAME, "x", "(1, 3, 4)"]),
    ((None, W, X[:, :3], B), ValueError, [NAME, "x", "(3, 3)", "(2, 4)"]),
    ((None, W, X[0, :3], B), ValueError, [NAME, "x", "(3,)", "(2, 4)"]),
    ((None, W, X, B[:1]), ValueError, [NAME, "bias", "(1,)", "(2,)", "(2, 4)"]),
    ((None, W, X, B[None]), ValueError, [NAME, "bias", "(1, 2)"]),
    ((None, W.astype(np.int64), X, B), TypeError, [NAME, "weight", "int64"]),
    ((None, W, X.astype(np.complex128), B), TypeError, [NAME, "x", "complex128"]),
    ((None, W, X, B.astype(bool)), TypeError, [NAME, "bias", "bool"]),
    ((None, None, X, B), TypeError, [NAME, "weight", "None"]),
    ((None, W, None, B), TypeError, [NAME, "x", "None"]),
    # act errors come from luxlib.activations.get, shared by every public function
    (("not_an_activation", W, X, B), ValueError, ["unknown activation", "not_an_activation"]),
    ((3, W, X, B), TypeError, ["act must be", "int"]),
]


@pytest.mark.parametrize("args, exc, fragments", ERRORS)
def test_errors(args, exc, fragments):
    with luxlib._dispatch.trace() as record, pytest.raises(exc) as info:
        dense(*args)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert record == []  # validation ran before any implementation
