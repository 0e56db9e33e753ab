"""batched_matmul: forward vs einsum, batch broadcasting, gradients, layouts, errors."""

import numpy as np
import pytest
from _helpers import (
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
from luxlib import batched_matmul as bmm

# (x shape, y shape): equal batches, a batch of 1 on either or both sides,
# empty batches (also against a batch of 1) and an empty contraction axis
SHAPES = [
    ((3, 2, 4), (3, 4, 5)),
    ((1, 2, 4), (3, 4, 5)),
    ((3, 2, 4), (1, 4, 5)),
    ((1, 3, 3), (1, 3, 2)),
    ((0, 2, 4), (0, 4, 5)),
    ((0, 2, 4), (1, 4, 5)),
    ((2, 3, 0), (2, 0, 4)),
]
NONEMPTY = [s for s in SHAPES if 0 not in s[0] + s[1]]


def make(xshape, yshape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, xshape).astype(dtype), rng.uniform(-1, 1, yshape).astype(dtype)


def reference(x, y):
    """z[b] = x[b] @ y[b] in float64, batches of 1 repeated explicitly."""
    batch = np.broadcast_shapes(x.shape[:1], y.shape[:1])
    x64 = np.broadcast_to(np.asarray(x, np.float64), batch + x.shape[1:])
    y64 = np.broadcast_to(np.asarray(y, np.float64), batch + y.shape[1:])
    return np.einsum("bmk,bkn->bmn", x64, y64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_forward(backend, dtype, shapes):
    x, y = make(*shapes, dtype=dtype)
    before = snapshot(x, y)
    with backend_ctx(backend):
        z = bmm(x, y)
    expected = reference(x, y)
    assert z.shape == expected.shape
    assert z.dtype == dtype
    np.testing.assert_allclose(z.astype(np.float64), expected, rtol=RTOL[dtype], atol=ATOL[dtype])
    assert_unchanged(before, (x, y))


def test_generic_implementation_runs():
    x, y = make((2, 3, 4), (2, 4, 5))
    with luxlib.backend("generic"), luxlib._dispatch.trace() as record:
        bmm(x, y)
    assert record == [("batched_matmul", "generic")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS + ["transposed"])
@pytest.mark.parametrize("arg", [0, 1])
@pytest.mark.parametrize("shapes", [((3, 2, 4), (3, 4, 5)), ((1, 2, 4), (3, 4, 5))], ids=str)
def test_layouts(backend, dtype, layout, arg, shapes):
    args = list(make(*shapes, dtype=dtype))
    expected = reference(*args)
    if layout == "transposed":  # a batched transpose: swapaxes of a C-ordered (B, N, M) array
        args[arg] = np.ascontiguousarray(args[arg].swapaxes(1, 2)).swapaxes(1, 2)
        assert not args[arg].flags.c_contiguous
    else:
        args[arg] = with_layout(args[arg], layout)
    with backend_ctx(backend):
        z = bmm(*args)
    np.testing.assert_allclose(z, expected, rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("shapes", NONEMPTY, ids=str)
def test_gradients(shapes):
    x, y = make(*shapes, seed=1)
    before = snapshot(x, y)
    check_gradients(bmm, (x, y), expect=[0, 1])
    assert_unchanged(before, (x, y))


@pytest.mark.parametrize("shapes", NONEMPTY, ids=str)
def test_pullback_matches_formulas(shapes):
    """dx = dz @ y^T, dy = x^T @ dz per batch entry, summed over a broadcast batch of 1."""
    x, y = make(*shapes, seed=2)
    z, pullback = luxlib.vjp(bmm, x, y)
    dz = np.random.default_rng(3).standard_normal(z.shape)
    xb = np.broadcast_to(x, z.shape[:1] + x.shape[1:])
    yb = np.broadcast_to(y, z.shape[:1] + y.shape[1:])
    dx_full = np.einsum("bmn,bkn->bmk", dz, yb)
    dy_full = np.einsum("bmk,bmn->bkn", xb, dz)
    dx, dy = pullback(dz)
    np.testing.assert_allclose(dx, dx_full.sum(0, keepdims=True) if x.shape[0] == 1 else dx_full, rtol=1e-12)
    np.testing.assert_allclose(dy, dy_full.sum(0, keepdims=True) if y.shape[0] == 1 else dy_full, rtol=1e-12)


@pytest.mark.parametrize(
    "dtypes", [(np.float32, np.float64), (np.float64, np.float16), (np.float16, np.float32)], ids=str
)
@pytest.mark.parametrize("shapes", [((1, 2, 3), (4, 3, 2)), ((4, 2, 3), (1, 3, 2))], ids=str)
def test_vjp_shapes_and_dtypes(dtypes, shapes):
    x, y = (a.astype(d) for a, d in zip(make(*shapes), dtypes))
    z, pullback = luxlib.vjp(bmm, x, y)
    assert z.dtype == np.result_type(*dtypes) and z.shape == (4, 2, 2)
    np.testing.assert_allclose(z, reference(x, y), rtol=RTOL[np.float16], atol=ATOL[np.float16])
    dx, dy = pullback(np.ones(z.shape))
    assert (dx.shape, dx.dtype) == (x.shape, x.dtype)
    assert (dy.shape, dy.dtype) == (y.shape, y.dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shapes", [s for s in SHAPES if s not in NONEMPTY], ids=str)
def test_empty(backend, shapes):
    x, y = make(*shapes)
    with backend_ctx(backend):
        z, pullback = luxlib.vjp(bmm, x, y)
    assert z.shape == reference(x, y).shape
    np.testing.assert_array_equal(z, np.zeros(z.shape))
    dx, dy = pullback(np.ones(z.shape))
    np.testing.assert_array_equal(dx, np.zeros(x.shape))
    np.testing.assert_array_equal(dy, np.zeros(y.shape))


def test_nan_inf_propagate():
    x, y = make((2, 2, 3), (2, 3, 2))
    x[0, 0, 0] = np.nan
    x[1, 1, 0] = np.inf
    y[1, 0, :] = 1.0
    with np.errstate(invalid="ignore"):  # NumPy warns about the NaN; the values are checked below
        z = bmm(x, y)
    assert np.isnan(z[0, 0]).all()
    assert np.isposinf(z[1, 1]).all()
    assert np.isfinite(z[0, 1]).all() and np.isfinite(z[1, 0]).all()


def test_array_likes():
    z = bmm([[[1, 2]]], [[[3], [4]]])
    np.testing.assert_array_equal(z, [[[11.0]]])
    assert z.dtype == np.float64


X, Y = make((2, 3, 4), (2, 4, 5))
NAME = "batched_matmul: "
ERRORS = [
    # (x, y), exception, fragments the message must contain
    ((X[0], Y), ValueError, [NAME, "x", "(3, 4)"]),
    ((X, Y[None]), ValueError, [NAME, "y", "(1, 2, 4, 5)"]),
    ((X[0, 0], Y[0]), ValueError, [NAME, "x", "(4,)"]),
    ((X, Y[:, :3]), ValueError, [NAME, "(2, 3, 4)", "(2, 3, 5)"]),
    ((X, np.concatenate([Y, Y[:1]])), ValueError, [NAME, "batch", "(2, 3, 4)", "(3, 4, 5)"]),
    ((X[:0], Y), ValueError, [NAME, "batch", "(0, 3, 4)", "(2, 4, 5)"]),
    ((X.astype(np.int32), Y), TypeError, [NAME, "x", "int32"]),
    ((X, Y.astype(np.complex64)), TypeError, [NAME, "y", "complex64"]),
    ((None, Y), TypeError, [NAME, "x", "None"]),
    ((X, "abc"), TypeError, [NAME, "y"]),
]


@pytest.mark.parametrize("args, exc, fragments", ERRORS)
def test_errors(args, exc, fragments):
    with luxlib._dispatch.trace() as record, pytest.raises(exc) as info:
        bmm(*args)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert record == []  # validation ran before any implementation
