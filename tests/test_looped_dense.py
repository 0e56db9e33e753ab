"""The BLAS/Cython fused dense kernels against the generic path.

Tolerance: a product ``A @ B`` over a contraction of length ``k`` is compared with
``scale = 1 + |A| @ |B|`` (plus the bias and the reference's own magnitude):
``|looped - generic| <= TOL * scale`` with ``TOL = 1e-12`` in float64 and
``max(16, 2k) * eps`` in float32 (the classical bound ``k * eps * |A| @ |B|`` for each
of the two paths, which sum in different orders, and 16 ulp for the activation).
Gradients pass through ``act'``; their scale uses ``|dy| * (2 + |z|)``, a bound on
``|dy * act'(z)|`` for every activation of the table at these magnitudes.
"""

import numpy as np
import pytest

import luxlib
from luxlib import activations
from luxlib._dispatch import trace
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

from luxlib._kernels import dense as kernels  # noqa: E402
from _helpers import ALL_ACT_IDS, ALL_ACTS, BOUND_ACTS, LAYOUTS, assert_unchanged, check_gradients, snapshot, with_layout  # noqa: E402

dense = luxlib.fused_dense_bias_activation
DTYPES = [np.float32, np.float64]
ACTS, ACT_IDS = ALL_ACTS, ALL_ACT_IDS
# output-only, input-needing, bound parameter
SOME_ACTS = [activations.relu, activations.gelu, BOUND_ACTS[0]]
SOME_IDS = ["relu", "gelu", "leakyrelu(a=0.2)"]

# (batch, in, out), batch None = a 1-D x; odd sizes; from batch and out >= 64 on, the
# kernels run one single-threaded gemm per thread's block of rows (two threads from
# batch * out >= 32768 on; odd blocks)
SHAPES = [(1, 1, 1), (3, 17, 1), (17, 3, 4097), (None, 17, 1023), (2, 4097, 3), (5, 1023, 17),
          (33, 5, 1023), (300, 17, 129), (131, 9, 257), (0, 4, 3), (3, 0, 4)]
PARALLEL = (131, 9, 257)


@pytest.fixture
def threads():
    """Set luxlib's thread count for one test."""
    yield luxlib.set_num_threads
    luxlib.set_num_threads(None)


def make(batch, n_in, n_out, dtype, seed=0):
    """``(weight, x, bias, dy)`` with entries of order 1."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, (n_out, n_in)) / np.sqrt(max(n_in, 1)) * 2
    x = rng.standard_normal((n_in,) if batch is None else (batch, n_in))
    b = rng.standard_normal(n_out)
    dy = rng.standard_normal((n_out,) if batch is None else (batch, n_out))
    return tuple(a.astype(dtype) for a in (w, x, b, dy))


def tol(dtype, k):
    return 1e-12 if dtype == np.float64 else max(16, 2 * k) * float(np.finfo(np.float32).eps)


def assert_close(got, want, scale, k):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    err = np.abs(got.astype(np.float64) - want) / (scale + np.abs(want))
    assert err.size == 0 or err.max() <= tol(want.dtype.type, k), f"max error {err.max():.3g} x scale"


def run_both(act, w, x, b, dy):
    """Looped and generic ``(y, grads)``; checks the looped kernel ran and nothing was mutated."""
    before = snapshot(w, x, b, dy)
    with trace() as record:
        y_plain = dense(act, w, x, b)
        y, pullback = luxlib.vjp(dense, act, w, x, b)
        grads = pullback(dy)
    assert record == [("fused_dense_bias_activation", "looped")] * 2
    np.testing.assert_array_equal(y_plain, y)
    assert_unchanged(before, (w, x, b, dy))
    with luxlib.backend("generic"), np.errstate(all="ignore"):
        y_ref, pullback_ref = luxlib.vjp(dense, act, w, x, b)
        grads_ref = pullback_ref(dy)
    return (y, grads), (y_ref, grads_ref)


def check_against_generic(act, w, x, b, dy):
    (y, grads), (y_ref, grads_ref) = run_both(act, w, x, b, dy)
    aw, ax = np.abs(w.astype(np.float64)), np.abs(np.atleast_2d(x).astype(np.float64))
    zscale = 1 + ax @ aw.T + (0 if b is None else np.abs(b.astype(np.float64)))
    n_out, n_in = w.shape
    assert_close(y, y_ref, zscale.reshape(y.shape), n_in)
    # |dz| <= |dy| * (2 + |z|); gemm inputs of the gradients are dz, w and x
    gz = np.abs(dy.astype(np.float64)).reshape(zscale.shape) * (1 + zscale)
    assert grads[0] is None
    assert_close(grads[1], grads_ref[1], 1 + gz.T @ ax, len(gz))
    assert_close(grads[2], grads_ref[2], (1 + gz @ aw).reshape(x.shape), n_out)
    if b is None:
        assert grads[3] is None
    else:
        assert_close(grads[3], grads_ref[3], 1 + gz.sum(axis=0), len(gz))


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_activation(dtype, act, with_bias):
    w, x, b, dy = make(7, 5, 9, dtype, seed=1)
    check_against_generic(act, w, x, b if with_bias else None, dy)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_shapes(dtype, act, shape, n_threads, threads):
    threads(n_threads)
    w, x, b, dy = make(*shape, dtype, seed=2)
    check_against_generic(act, w, x, b, dy)


@pytest.mark.parametrize("shape", [(6, 5, 7), PARALLEL], ids=["serial", "blocked"])
@pytest.mark.parametrize("arg", ["weight", "x", "bias", "dy"])
@pytest.mark.parametrize("layout", LAYOUTS + ["transposed", "wide_rows"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_layouts(dtype, layout, arg, shape):
    args = dict(zip(("weight", "x", "bias", "dy"), make(*shape, dtype, seed=3)))
    a = args[arg]
    if layout == "transposed":  # the .T view of a C-ordered array
        a = np.ascontiguousarray(a.T).T
    elif layout == "wide_rows":  # rows of a wider array: BLAS reads it with a larger ld
        wide = np.zeros(a.shape[:-1] + (a.shape[-1] + 3,), dtype)
        wide[..., : a.shape[-1]] = a
        a = wide[..., : a.shape[-1]]
    else:
        a = with_layout(a, layout)
    laid_out = dict(args, **{arg: a})
    check_against_generic(activations.gelu, *laid_out.values())
    if shape == PARALLEL:
        return  # OpenBLAS may sum a transposed operand's small blocks in another order
    # the same numbers as with C-ordered inputs
    (y, grads), _ = run_both(activations.gelu, *laid_out.values())
    (y_c, grads_c), _ = run_both(activations.gelu, *args.values())
    np.testing.assert_array_equal(y, y_c)
    for g, g_c in zip(grads[1:], grads_c[1:]):
        np.testing.assert_array_equal(g, g_c)


@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_thread_count_independence(dtype, act, threads):
    w, x, b, dy = make(*PARALLEL, dtype, seed=4)
    results = []
    for n in (1, 2, 2, 3, 4):  # 3 and 4: the backward splits its products differently
        threads(n)
        y, pullback = luxlib.vjp(dense, act, w, x, b)
        results.append((y, *pullback(dy)[1:]))
    one, two, again, *more = results
    for a, b_ in zip(two, again):  # deterministic for a given thread count
        np.testing.assert_array_equal(a, b_)
    # across thread counts: one gemm per thread's block of rows (BLAS may round a
    # partial block differently) and db's per-thread partial sums
    for other in (two, *more):
        for a, b_ in zip(one, other):
            np.testing.assert_allclose(a, b_, rtol=tol(dtype, len(x)), atol=tol(dtype, len(x)))


@pytest.mark.parametrize("act", SOME_ACTS + [activations.softplus], ids=SOME_IDS + ["softplus"])
@pytest.mark.parametrize("shape", [(3, 4, 2), (None, 4, 3)], ids=str)
def test_gradients_finite_differences(act, shape):
    w, x, b, _ = make(*shape, np.float64, seed=5)
    with trace() as record:
        check_gradients(dense, (act, w, x, b), expect=[1, 2, 3])
        check_gradients(dense, (act, w, x, None), expect=[1, 2])
    assert set(record) == {("fused_dense_bias_activation", "looped")}


@pytest.mark.parametrize("vjp", [False, True])
def test_transposed_operands_reach_blas_uncopied(monkeypatch, vjp):
    w, x, b, dy = make(6, 5, 7, np.float64)
    wt, xt = np.asfortranarray(w), np.ascontiguousarray(x.T).T
    seen = []
    for name in ("forward", "backward"):
        real = getattr(kernels, name)

        def spy(act, p, *arrays, real=real):
            seen.extend(a for a in arrays if isinstance(a, np.ndarray))
            return real(act, p, *arrays)

        monkeypatch.setattr(kernels, name, spy)
    if vjp:
        y, pullback = luxlib.vjp(dense, "gelu", wt, xt, b)
        pullback(dy)
    else:
        y = dense("gelu", wt, xt, b)
    # the kernels read weight and x where they lie (transposed through BLAS's flags)
    for a in (wt, xt):
        assert sum(np.shares_memory(a, s) for s in seen) == (2 if vjp else 1)
    with luxlib.backend("generic"):
        np.testing.assert_allclose(y, dense("gelu", w, x, b), rtol=1e-12)


def test_nan_inf_propagate():
    w, x, b, _ = make(3, 4, 5, np.float64)
    x[0, 1], x[1, 2] = np.nan, np.inf
    w[:, 2] = 1.0
    y = dense("relu", w, x, b)
    assert np.isnan(y[0]).all() and np.isposinf(y[1]).all() and np.isfinite(y[2]).all()


def test_inference_allocates_only_the_output():
    import tracemalloc

    w, x, b, _ = make(256, 64, 512, np.float64)
    dense("gelu", w, x, b)  # warm up
    tracemalloc.start()
    try:
        y = dense("gelu", w, x, b)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.1 * y.nbytes


def test_kernel_rejects_mismatched_shapes():
    w, x, b, _ = make(3, 4, 5, np.float64)
    y = np.empty((3, 5))
    with pytest.raises(ValueError, match="shapes do not fit"):
        kernels.forward(1, 0.0, x, False, 4, w[:, :3], False, 4, b, y, y)
    with pytest.raises(ValueError, match="bias must have length 5, got 4"):
        kernels.forward(1, 0.0, x, False, 4, w, False, 4, b[:4], y, y)
    with pytest.raises(ValueError, match="db must have length 5, got 2"):
        kernels.backward(1, 0.0, y, y, x, False, 4, w, False, 4, y.copy(), x.copy(), w.copy(), b[:2])
