"""dropout and alpha_dropout: the Philox mask contract, formulas, gradients, errors."""

import copy

import numpy as np
import pytest

import luxlib
from luxlib._dispatch import trace
from luxlib._generic.philox import uniform
from luxlib._kernels import IMPORT_ERROR

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

ALPHA = -1.7580993408473766
SHAPES = [(7,), (4, 5), (2, 3, 4)]


def rng_of(seed=0):
    return np.random.default_rng(seed)


def upcoming(gen):
    """The next draws of ``gen``, without advancing it."""
    return copy.deepcopy(gen).integers(0, 2**63, size=4).tolist()


def expected_u(rng, shape):
    """``u`` per doc/dropout.md: key = (lo, hi) of one uint64 drawn from a copy of rng."""
    seed = int(copy.deepcopy(rng).integers(0, 2**64, dtype=np.uint64))
    return uniform((seed & 0xFFFFFFFF, seed >> 32), shape)


def expected_mask(rng, shape, p, dtype, invp=None):
    invp = 1 / (1 - p) if invp is None else invp
    return np.where(expected_u(rng, shape) > p, invp, 0).astype(dtype)


def data(shape, dtype=np.float64, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------- dropout values


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropout_matches_contract(dtype, shape, backend):
    rng, x = rng_of(), data(shape, dtype)
    with backend_ctx(backend):
        y, mask, rng2 = luxlib.dropout(rng, x, 0.3, True)
    want = expected_mask(rng, shape, 0.3, dtype)
    assert mask.dtype == y.dtype == dtype and mask.shape == y.shape == shape
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(y, x * want)
    assert set(np.unique(mask).tolist()) <= {0.0, float(dtype(1 / 0.7))}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropout_layouts_and_no_mutation(dtype, layout):
    x = with_layout(data((4, 6), dtype), layout)
    before = snapshot(x)
    y, mask, _ = luxlib.dropout(rng_of(), x, 0.5, True)
    assert_unchanged(before, [x])
    want = expected_mask(rng_of(), (4, 6), 0.5, dtype)
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(y, np.asarray(x) * want)


def test_dropout_accepts_array_likes():
    y, mask, _ = luxlib.dropout(rng_of(), [[1.0, 2.0, 3.0]], 0.5, True)
    np.testing.assert_array_equal(y, np.array([[1.0, 2.0, 3.0]]) * mask)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "dims, mask_shape",
    [
        (None, (3, 4, 5)),
        (0, (3, 1, 1)),
        (-1, (1, 1, 5)),
        ((0, 2), (3, 1, 5)),
        ([1], (1, 4, 1)),
        ((-3, 1), (3, 4, 1)),
        ((), (1, 1, 1)),
        (np.int64(1), (1, 4, 1)),
    ],
)
def test_dropout_dims(dims, mask_shape, backend):
    rng, x = rng_of(5), data((3, 4, 5))
    with backend_ctx(backend):
        y, mask, _ = luxlib.dropout(rng, x, 0.5, True, dims=dims)
    assert mask.shape == mask_shape and y.shape == x.shape
    want = expected_mask(rng, mask_shape, 0.5, np.float64)
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(y, x * want)


def test_dropout_dims_drops_whole_slices():
    x = np.ones((64, 3, 4))
    y, mask, _ = luxlib.dropout(rng_of(), x, 0.5, True, dims=0)
    rows = y.reshape(64, -1)
    assert np.all((rows == 0).all(axis=1) | (rows == 2).all(axis=1))
    assert 0 < (mask == 0).sum() < 64  # some samples dropped, some kept


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_statistics(p):
    x = np.ones(200_000)
    y, mask, _ = luxlib.dropout(rng_of(11), x, p, True)
    keep = np.mean(mask != 0)
    assert abs(keep - (1 - p)) < 0.01
    assert abs(y.mean() - 1) < 0.03  # the scale 1/(1-p) preserves the mean


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropout_threshold_is_exact(dtype):
    # keep iff u > p exactly: u == p drops; p just below u (not a float32) keeps
    rng, x = rng_of(), np.ones(64, dtype)
    u0 = float(expected_u(rng, x.shape)[0])
    assert luxlib.dropout(rng, x, u0, True)[1][0] == 0
    assert luxlib.dropout(rng, x, u0 - 2**-40, True)[1][0] != 0
    assert luxlib.alpha_dropout(rng, x, u0, True)[0][0] != luxlib.alpha_dropout(rng, x, u0 - 2**-40, True)[0][0]


def test_dropout_invp():
    x = data((5, 6))
    y, mask, _ = luxlib.dropout(rng_of(), x, 0.4, True, 1.0)
    want = expected_mask(rng_of(), x.shape, 0.4, np.float64, invp=1.0)
    assert set(np.unique(mask).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(mask, want)
    np.testing.assert_array_equal(y, x * want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropout_p_zero_and_one(dtype):
    x = data((6, 7), dtype)
    y, mask, _ = luxlib.dropout(rng_of(), x, 0.0, True)
    # keep where u > 0: only u == 0 (probability 2**-24) would drop; not for this seed
    assert np.all(expected_u(rng_of(), x.shape) > 0)
    np.testing.assert_array_equal(mask, np.ones_like(x))
    np.testing.assert_array_equal(y, x)
    x[0, 0] = np.inf
    with np.errstate(invalid="ignore"):
        y, mask, _ = luxlib.dropout(rng_of(), x, 1.0, True)
    np.testing.assert_array_equal(mask, np.zeros_like(x))
    assert not np.isnan(mask).any()
    assert np.isnan(y[0, 0]) and np.all(y.reshape(-1)[1:] == 0)  # inf * 0, as y = x * mask says


def test_dropout_nan_inf_propagate():
    x = data((4, 5))
    x[0, :] = np.nan
    x[1, :] = np.inf
    with np.errstate(invalid="ignore"):
        y, mask, _ = luxlib.dropout(rng_of(), x, 0.5, True)
        np.testing.assert_array_equal(y, x * mask)
    assert np.isnan(y[0]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dropout_empty(dtype, backend):
    x = np.zeros((0, 3), dtype)
    with backend_ctx(backend):
        y, mask, rng2 = luxlib.dropout(rng_of(), x, 0.5, True)
        assert y.shape == mask.shape == (0, 3) and y.dtype == dtype
        y, mask, _ = luxlib.dropout(rng_of(), x, 0.5, True, dims=1)
        assert y.shape == (0, 3) and mask.shape == (1, 3)
        y, mask, _ = luxlib.dropout(rng2, x, 0.5, True, mask=np.ones((0, 3), dtype), update_mask=False)
        assert y.shape == (0, 3)


def test_dropout_scalar_input():
    x = np.array(2.0)
    y, mask, _ = luxlib.dropout(rng_of(), x, 0.5, True)
    assert y.shape == mask.shape == ()
    np.testing.assert_array_equal(mask, expected_mask(rng_of(), (), 0.5, np.float64))


# ---------------------------------------------------------------- rng threading


def test_dropout_rng_threading():
    rng, x = rng_of(3), data((8, 8))
    before = upcoming(rng)
    y1, m1, r1 = luxlib.dropout(rng, x, 0.5, True)
    y2, m2, r2 = luxlib.dropout(rng, x, 0.5, True)
    assert upcoming(rng) == before, "the caller's generator was advanced"
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    assert r1 is not rng and isinstance(r1, np.random.Generator)
    reference = copy.deepcopy(rng)
    reference.integers(0, 2**64, dtype=np.uint64)
    assert upcoming(r1) == upcoming(reference) == upcoming(r2)
    _, m3, r3 = luxlib.dropout(r1, x, 0.5, True)
    assert not np.array_equal(m3, m1)  # threading the returned rng gives a new mask
    assert upcoming(r3) != upcoming(r1)


def test_dropout_different_seeds_differ():
    x = np.ones(256)
    masks = [luxlib.dropout(rng_of(s), x, 0.5, True)[1] for s in range(3)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


# ---------------------------------------------------------------- reused masks


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims", [None, 0, (0, 2)])
def test_dropout_reuse_mask(dims, backend):
    x, x2 = data((3, 4, 5)), data((3, 4, 5), seed=2)
    with backend_ctx(backend):
        _, mask, rng2 = luxlib.dropout(rng_of(), x, 0.5, True, dims=dims)
        before = snapshot(mask)
        y2, mask2, rng3 = luxlib.dropout(rng2, x2, 0.5, True, dims=dims, mask=mask, update_mask=False)
    assert_unchanged(before, [mask])
    np.testing.assert_array_equal(y2, x2 * mask)
    np.testing.assert_array_equal(mask2, mask)
    assert rng3 is rng2


def test_dropout_reuse_mask_promotes():
    x = data((3, 4), np.float32)
    mask = np.where(np.arange(12).reshape(3, 4) % 2, 2.0, 0.0)
    y, mask2, _ = luxlib.dropout(rng_of(), x, 0.5, True, mask=mask, update_mask=False)
    assert y.dtype == mask2.dtype == np.float64
    np.testing.assert_array_equal(y, x.astype(np.float64) * mask)


def test_dropout_update_mask_true_ignores_given_mask():
    x = data((4, 5))
    y, mask, _ = luxlib.dropout(rng_of(), x, 0.5, True, mask=np.full((4, 5), 7.0), update_mask=True)
    np.testing.assert_array_equal(mask, expected_mask(rng_of(), x.shape, 0.5, np.float64))


@pytest.mark.parametrize(
    "dims, mask_shape",
    [(None, (3, 5)), (None, (4,)), (0, (3, 4)), (0, (3,)), (1, (3, 1)), ((0, 1), (1, 4))],
)
def test_dropout_reuse_mask_shape_error(dims, mask_shape):
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"dropout: mask must have shape .*got \(" + ", ?".join(map(str, mask_shape))):
        luxlib.dropout(rng_of(), x, 0.5, True, dims=dims, mask=np.ones(mask_shape), update_mask=False)


def test_dropout_update_mask_false_needs_mask():
    with pytest.raises(ValueError, match="dropout: update_mask=False needs the mask"):
        luxlib.dropout(rng_of(), np.ones(3), 0.5, True, update_mask=False)


# ---------------------------------------------------------------- training modes


@pytest.mark.parametrize("training", [False, None, np.False_])
def test_dropout_not_training(training):
    rng, x = rng_of(), data((3, 4))
    before = upcoming(rng)
    y, mask, rng2 = luxlib.dropout(rng, x, 0.5, training)
    assert y is x and mask is x and rng2 is rng
    assert upcoming(rng) == before
    # a reused mask is not applied either
    y, mask, _ = luxlib.dropout(rng, x, 0.5, False, mask=np.zeros((3, 4)), update_mask=False)
    assert y is x and mask is x


def test_dropout_training_none_under_vjp_means_training():
    rng, x = rng_of(), data((3, 4))
    (y, mask, rng2), pullback = luxlib.vjp(luxlib.dropout, rng, x, 0.5, None)
    np.testing.assert_array_equal(mask, expected_mask(rng, x.shape, 0.5, np.float64))
    np.testing.assert_array_equal(y, x * mask)
    dy = data((3, 4), seed=3)
    grads = pullback(dy)
    assert grads[0] is None and grads[2:] == (None, None)
    np.testing.assert_array_equal(grads[1], dy * mask)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("reuse", [False, True])
def test_dropout_makes_one_dispatch_call(training, reuse, backend):
    x = data((3, 4))
    kw = {"mask": np.ones((3, 4)), "update_mask": False} if reuse else {}
    with backend_ctx(backend), trace() as record:
        luxlib.dropout(rng_of(), x, 0.5, training, **kw)
        luxlib.alpha_dropout(rng_of(), x, 0.5, training)
    # the Cython kernels run when training on the "auto" backend (not training is the identity)
    kind = "looped" if backend == "auto" and training and IMPORT_ERROR is None else "generic"
    assert record == [("dropout", kind), ("alpha_dropout", kind)]


# ---------------------------------------------------------------- dropout gradients


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"dims": 0}, {"dims": (0, 2)}, {"invp": 3.0}],
    ids=["all", "dims0", "dims02", "invp"],
)
@pytest.mark.parametrize("training", [True, None])
def test_dropout_gradients(training, kwargs):
    x = data((2, 3, 4))
    grads = check_gradients(luxlib.dropout, (rng_of(), x, 0.5, training), kwargs, expect=[1])
    _, mask, _ = luxlib.dropout(rng_of(), x, 0.5, True, **kwargs)
    dy = np.random.default_rng(0).standard_normal(x.shape)  # check_gradients' dy
    np.testing.assert_array_equal(grads[1], dy * mask)


def test_dropout_gradients_reused_mask_and_not_training():
    x = data((3, 4))
    mask = np.where(data((3, 1), seed=4) > 0, 2.0, 0.0)
    grads = check_gradients(
        luxlib.dropout, (rng_of(), x, 0.5, True), {"dims": 0, "mask": mask, "update_mask": False}, expect=[1]
    )
    dy = np.random.default_rng(0).standard_normal(x.shape)
    np.testing.assert_array_equal(grads[1], dy * mask)
    grads = check_gradients(luxlib.dropout, (rng_of(), x, 0.5, False), expect=[1])
    np.testing.assert_array_equal(grads[1], np.random.default_rng(0).standard_normal(x.shape))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_dropout_pullback_dtype(dtype):
    x = data((3, 4), dtype)
    (y, mask, _), pullback = luxlib.vjp(luxlib.dropout, rng_of(), x, 0.5, True)
    dx = pullback(np.ones_like(y))[1]
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, mask)


# ---------------------------------------------------------------- dropout errors


@pytest.mark.parametrize("rng", [None, 0, np.random.RandomState(0), np.random.PCG64(0)])
def test_dropout_rng_type_error(rng):
    with pytest.raises(TypeError, match="dropout: rng must be a numpy.random.Generator"):
        luxlib.dropout(rng, np.ones(3), 0.5, True)


@pytest.mark.parametrize("p", [-0.1, 1.5, np.nan, np.inf])
def test_dropout_p_range_error(p):
    with pytest.raises(ValueError, match=r"dropout: p must lie in \[0, 1\]"):
        luxlib.dropout(rng_of(), np.ones(3), p, True)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((np.ones(3), "0.5", True), {}, "dropout: p must be a real number"),
        ((np.ones(3), None, True), {}, "dropout: p must be a real number"),
        ((np.ones(3), 0.5, True, "2"), {}, "dropout: invp must be a real number"),
        ((np.arange(3), 0.5, True), {}, "dropout: x must have a floating dtype"),
        ((np.ones(3, complex), 0.5, True), {}, "dropout: x must have a floating dtype"),
        ((None, 0.5, True), {}, "dropout: x must be an array"),
        ((np.ones(3), 0.5, "yes"), {}, "dropout: training must be True, False or None"),
        ((np.ones((2, 3)), 0.5, True, None, 0.5), {}, "dropout: dims must be None, an int or a tuple of ints"),
        ((np.ones((2, 3)), 0.5, True, None, ("a",)), {}, "dropout: dims must be None, an int or a tuple"),
        ((np.ones((2, 3)), 0.5, True, None, True), {}, "dropout: dims must be None, an int or a tuple"),
        ((np.ones((2, 3)), 0.5, True, None, (0, False)), {}, "dropout: dims must be None, an int or a tuple"),
        ((np.ones(3), 0.5, True), {"update_mask": "no"}, "dropout: update_mask must be True or False"),
        ((np.ones(3), 0.5, True), {"mask": np.ones(3, int), "update_mask": False}, "dropout: mask must have a float"),
    ],
)
def test_dropout_type_errors(args, kwargs, match):
    with pytest.raises(TypeError, match=match):
        luxlib.dropout(rng_of(), *args, **kwargs)


@pytest.mark.parametrize("dims", [2, -3, (0, 2), (0, 0), (1, -1)])
def test_dropout_dims_value_error(dims):
    with pytest.raises(ValueError, match=r"dropout: dims .* x, which has shape \(2, 3\)"):
        luxlib.dropout(rng_of(), np.ones((2, 3)), 0.5, True, dims=dims)


def test_dropout_validates_when_not_training():
    with pytest.raises(ValueError, match="dropout: p must lie"):
        luxlib.dropout(rng_of(), np.ones(3), 2.0, False)
    with pytest.raises(ValueError, match="dropout: mask must have shape"):
        luxlib.dropout(rng_of(), np.ones(3), 0.5, False, mask=np.ones(2), update_mask=False)


# ---------------------------------------------------------------- alpha_dropout


def alpha_expected(rng, x, p, alpha=ALPHA, A=None, B=None):
    """Independent formula; ``u`` regenerated from the Philox reference."""
    A = ((1 - p) * (1 + p * alpha**2)) ** -0.5 if A is None else A
    B = -A * alpha * p if B is None else B
    keep = expected_u(rng, x.shape) > p
    return np.where(keep, x.astype(np.float64), alpha) * A + B, keep


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_alpha_dropout_formula(dtype, shape, backend):
    rng, x = rng_of(4), data(shape, dtype)
    with backend_ctx(backend):
        y, rng2 = luxlib.alpha_dropout(rng, x, 0.3, True)
    want, keep = alpha_expected(rng, x, 0.3)
    assert y.dtype == dtype and y.shape == shape
    assert 0 < keep.sum() < keep.size
    np.testing.assert_allclose(y, want, rtol=2 * RTOL[dtype], atol=2 * ATOL[dtype])
    assert isinstance(rng2, np.random.Generator) and rng2 is not rng


@pytest.mark.parametrize("layout", LAYOUTS)
def test_alpha_dropout_layouts_and_no_mutation(layout):
    x = with_layout(data((4, 6)), layout)
    before = snapshot(x)
    y, _ = luxlib.alpha_dropout(rng_of(), x, 0.5, True)
    assert_unchanged(before, [x])
    np.testing.assert_allclose(y, alpha_expected(rng_of(), np.asarray(x), 0.5)[0], rtol=1e-12, atol=1e-12)


def test_alpha_dropout_uses_dropouts_stream():
    x = np.ones((5, 6))
    y, _ = luxlib.alpha_dropout(rng_of(9), x, 0.4, True)
    _, mask, _ = luxlib.dropout(rng_of(9), x, 0.4, True)
    A = 1 / np.sqrt(0.6 * (1 + 0.4 * ALPHA**2))
    np.testing.assert_array_equal(np.isclose(y, A - A * ALPHA * 0.4), mask != 0)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_alpha_dropout_preserves_mean_and_variance(p):
    x = np.random.default_rng(21).standard_normal(200_000)
    y, _ = luxlib.alpha_dropout(rng_of(22), x, p, True)
    assert abs(y.mean()) < 0.02
    assert abs(y.var() - 1) < 0.03


def test_alpha_dropout_custom_constants():
    x = data((4, 5))
    y, _ = luxlib.alpha_dropout(rng_of(), x, 0.25, True, -1.0, 2.0, 0.5)
    np.testing.assert_allclose(y, alpha_expected(rng_of(), x, 0.25, -1.0, 2.0, 0.5)[0], rtol=1e-12)
    # A and B default from the alpha given
    y, _ = luxlib.alpha_dropout(rng_of(), x, 0.25, True, -1.0)
    np.testing.assert_allclose(y, alpha_expected(rng_of(), x, 0.25, -1.0)[0], rtol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_alpha_dropout_p_zero_and_one(dtype):
    x = data((6, 7), dtype)
    y, _ = luxlib.alpha_dropout(rng_of(), x, 0.0, True)
    np.testing.assert_array_equal(y, x)  # A = 1, B = 0, nothing dropped for this seed
    y, _ = luxlib.alpha_dropout(rng_of(), x, 1.0, True)
    np.testing.assert_array_equal(y, np.zeros_like(x))  # the p -> 1 limit: A = B = 0
    (y, _), pullback = luxlib.vjp(luxlib.alpha_dropout, rng_of(), x, 1.0, True)
    np.testing.assert_array_equal(pullback(np.ones_like(x))[1], np.zeros_like(x))


def test_alpha_dropout_nan_propagates_where_kept():
    x = np.full((4, 5), np.nan)
    y, _ = luxlib.alpha_dropout(rng_of(), x, 0.5, True)
    want, keep = alpha_expected(rng_of(), x, 0.5)
    assert np.isnan(y[keep]).all() and np.isfinite(y[~keep]).all()
    np.testing.assert_allclose(y, want, rtol=1e-12)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_alpha_dropout_empty(dtype):
    y, rng2 = luxlib.alpha_dropout(rng_of(), np.zeros((0, 4), dtype), 0.5, True)
    assert y.shape == (0, 4) and y.dtype == dtype


@pytest.mark.parametrize("training", [False, None])
def test_alpha_dropout_not_training(training):
    rng, x = rng_of(), data((3, 4))
    before = upcoming(rng)
    y, rng2 = luxlib.alpha_dropout(rng, x, 0.5, training)
    assert y is x and rng2 is rng and upcoming(rng) == before


def test_alpha_dropout_rng_threading():
    rng, x = rng_of(4), data((6, 6))
    before = upcoming(rng)
    y1, r1 = luxlib.alpha_dropout(rng, x, 0.5, True)
    y2, _ = luxlib.alpha_dropout(rng, x, 0.5, True)
    assert upcoming(rng) == before
    np.testing.assert_array_equal(y1, y2)
    y3, _ = luxlib.alpha_dropout(r1, x, 0.5, True)
    assert not np.array_equal(y1, y3)


@pytest.mark.parametrize(
    "args",
    [(0.3, True), (0.3, None), (0.3, False), (0.6, True, -1.0, 2.0, 0.1)],
    ids=["train", "none", "eval", "custom"],
)
def test_alpha_dropout_gradients(args):
    x = data((3, 5))
    grads = check_gradients(luxlib.alpha_dropout, (rng_of(), x) + args, expect=[1])
    dy = np.random.default_rng(0).standard_normal(x.shape)
    if args[1] is False:
        np.testing.assert_array_equal(grads[1], dy)
    else:
        p, alpha = args[0], (args[2] if len(args) > 2 else ALPHA)
        A = args[3] if len(args) > 3 else ((1 - p) * (1 + p * alpha**2)) ** -0.5
        keep = expected_u(rng_of(), x.shape) > p
        np.testing.assert_allclose(grads[1], dy * keep * A, rtol=1e-15)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((None, np.ones(3), 0.5, True), TypeError, "alpha_dropout: rng must be a numpy.random.Generator"),
        ((rng_of(), np.ones(3, np.int32), 0.5, True), TypeError, "alpha_dropout: x must have a floating dtype"),
        ((rng_of(), np.ones(3), "p", True), TypeError, "alpha_dropout: p must be a real number"),
        ((rng_of(), np.ones(3), -0.5, True), ValueError, r"alpha_dropout: p must lie in \[0, 1\]"),
        ((rng_of(), np.ones(3), 1.01, False), ValueError, r"alpha_dropout: p must lie in \[0, 1\]"),
        ((rng_of(), np.ones(3), 0.5, 1), TypeError, "alpha_dropout: training must be True, False or None"),
        ((rng_of(), np.ones(3), 0.5, True, "a"), TypeError, "alpha_dropout: alpha must be a real number"),
        ((rng_of(), np.ones(3), 0.5, True, None, [1.0]), TypeError, "alpha_dropout: A must be a real number"),
        ((rng_of(), np.ones(3), 0.5, True, None, None, 1j), TypeError, "alpha_dropout: B must be a real number"),
    ],
)
def test_alpha_dropout_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        luxlib.alpha_dropout(*args)
