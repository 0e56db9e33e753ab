"""The BLAS/Cython batched matmul kernels against the generic path.

Tolerance: a product ``A @ B`` over a contraction of length ``k`` (summed over ``s``
batch entries for a broadcast argument's gradient) is compared with
``scale = |A| @ |B|``: ``|looped - generic| <= TOL * (1 + scale)`` with
``TOL = 1e-12`` in float64 and ``max(16, 2 k s) * eps`` in float32 (the classical
bound ``k * eps * |A| @ |B|`` for each of the two paths, which sum in different orders).
"""

import numpy as np
import pytest

import luxlib
from luxlib._dispatch import trace
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

from luxlib._kernels import matmul as kernels  # noqa: E402
from luxlib._blas_layout import blas_operand  # noqa: E402
from _helpers import LAYOUTS, assert_unchanged, check_gradients, snapshot, with_layout  # noqa: E402

bmm = luxlib.batched_matmul
DTYPES = [np.float32, np.float64]

# (x shape, y shape): odd sizes, batches of 1 on either side, empty batches and
# contractions; (4097, ...) and (300, ...) run the prange over the batch, the last
# two are short batches of products large enough to run one by one on BLAS's threads
SHAPES = [
    ((1, 1, 1), (1, 1, 1)),
    ((3, 1, 17), (3, 17, 3)),
    ((17, 3, 4), (1, 4, 1023)),
    ((1, 17, 3), (5, 3, 4097)),
    ((4097, 3, 5), (4097, 5, 2)),
    ((300, 17, 33), (1, 33, 9)),
    ((1, 9, 17), (300, 17, 33)),
    ((0, 2, 4), (1, 4, 5)),
    ((2, 3, 0), (2, 0, 4)),
    ((2, 0, 3), (1, 3, 4)),
    ((2, 128, 256), (2, 256, 128)),
    ((3, 129, 131), (1, 131, 257)),
    ((8, 128, 256), (1, 256, 129)),
    # the small kernel: whole vectors of columns read in place (n = 16, 32), several
    # row tiles with a partial one (m = 17), a long parallel batch, a broadcast sum
    ((5, 17, 16), (5, 16, 16)),
    ((7, 9, 13), (1, 13, 32)),
    ((4096, 16, 16), (4096, 16, 16)),
    ((1, 16, 16), (700, 16, 16)),
    # B held in registers on AVX-512 (k <= 16, n <= one vector: 16 float / 8 double):
    # whole and partial vectors, k at and below the limit, rows not a multiple of 4
    ((6, 7, 15), (1, 15, 8)),
    ((3, 18, 16), (3, 16, 5)),
    # BLAS products with a transposed operand copied (transposed) into a thread buffer:
    # the backward's dz @ y^T at ~40^3 (register blocks and ragged edges) and its
    # x^T @ dz at ~128^3, both in the parallel loop over the batch
    ((300, 40, 33), (300, 33, 45)),
    ((4, 128, 129), (4, 129, 130)),
]


@pytest.fixture
def threads():
    yield luxlib.set_num_threads
    luxlib.set_num_threads(None)


def make(xshape, yshape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal(xshape), rng.standard_normal(yshape)
    batch = 0 if 0 in (xshape[0], yshape[0]) else max(xshape[0], yshape[0])
    dz = rng.standard_normal((batch, xshape[1], yshape[2]))
    return x.astype(dtype), y.astype(dtype), dz.astype(dtype)


def assert_close(got, want, scale, k):
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 1e-12 if want.dtype == np.float64 else max(16, 2 * k) * float(np.finfo(np.float32).eps)
    err = np.abs(got.astype(np.float64) - want) / (1 + scale)
    assert err.size == 0 or err.max() <= tol, f"max error {err.max():.3g} x scale"


def summed(g, batch):
    """Sum over the batch when the argument had a broadcast batch of 1."""
    return g.sum(axis=0, keepdims=True) if batch == 1 else g


def check_against_generic(x, y, dz):
    before = snapshot(x, y, dz)
    with trace() as record:
        z_plain = bmm(x, y)
        z, pullback = luxlib.vjp(bmm, x, y)
        dx, dy = pullback(dz)
    assert record == [("batched_matmul", "looped")] * 2
    np.testing.assert_array_equal(z_plain, z)
    assert_unchanged(before, (x, y, dz))
    with luxlib.backend("generic"):
        z_ref, pullback_ref = luxlib.vjp(bmm, x, y)
        dx_ref, dy_ref = pullback_ref(dz)
    ax, ay, adz = (np.abs(a.astype(np.float64)) for a in (x, y, dz))
    batch = len(dz)
    assert_close(z, z_ref, ax @ ay, x.shape[2])
    assert_close(dx, dx_ref, summed(adz @ ay.swapaxes(1, 2), len(x)), y.shape[2] * batch)
    assert_close(dy, dy_ref, summed(ax.swapaxes(1, 2) @ adz, len(y)), x.shape[1] * batch)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_generic(dtype, shapes, n_threads, threads):
    threads(n_threads)
    check_against_generic(*make(*shapes, dtype))


def test_shapes_cover_every_schedule(threads):
    threads(2)
    plans = set()
    for xs, ys in SHAPES:
        batch = max(xs[0], ys[0])
        t = kernels.batch_threads(batch, xs[1], ys[2], xs[2])
        large = xs[1] * ys[2] * xs[2] >= kernels.LARGE_PRODUCT_WORK
        plans.add("parallel" if t > 1 else "large" if large else "serial")
    assert plans == {"serial", "parallel", "large"}


def test_shapes_cover_both_kernels():
    """Products below the size threshold run in the small kernel, the others in BLAS."""
    for double in (False, True):
        small = {kernels.small_products(xs[1], ys[2], xs[2], double) for xs, ys in SHAPES}
        assert small == {True, False}
    assert kernels.small_products(32, 32, 32, False) and not kernels.small_products(64, 64, 64, False)
    assert not kernels.small_products(1, 1, 9000, False)  # the packed panel would not fit


def test_shapes_cover_transposing_copies():
    """The backward's products (dx: dz @ y^T, dy: x^T @ dz) over SHAPES take every
    path: BLAS reading the operand as stored, or a transposed copy of a or of b."""
    for double in (False, True):
        seen = set()
        for xs, ys in SHAPES:
            (m, k), n = xs[1:], ys[2]
            seen.add(kernels.packed_operand(m, k, n, False, True, double))  # dx
            seen.add(kernels.packed_operand(k, n, m, True, False, double))  # dy
        assert seen == {None, "a", "b"}
    assert kernels.packed_operand(256, 256, 256, False, False, False) is None
    assert kernels.packed_operand(16, 16, 16, True, True, False) is None  # small kernel


@pytest.mark.parametrize("shapes, blas", [(((300, 16, 16), (300, 16, 16)), False),
                                           (((300, 40, 40), (300, 40, 40)), True)], ids=str)
def test_blas_threads_limited_only_around_blas(shapes, blas, threads, monkeypatch):
    """The small kernel calls no BLAS, so it skips the threadpoolctl limit."""
    import luxlib._looped.matmul as glue

    threads(2)
    calls = []
    real = glue.single_threaded_blas

    def spy():
        calls.append(1)
        return real()

    monkeypatch.setattr(glue, "single_threaded_blas", spy)
    x, y, dz = make(*shapes, np.float32)
    with trace() as record:
        _, pullback = luxlib.vjp(bmm, x, y)
        pullback(dz)
    assert record == [("batched_matmul", "looped")]
    assert len(calls) == (2 if blas else 0)  # forward; dx and dy in one parallel loop


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_small_kernel_same_result_any_threads(dtype, threads):
    x, y, dz = make((2000, 7, 19), (2000, 19, 23), dtype, seed=4)
    results = []
    for n in (1, 2):
        threads(n)
        z, pullback = luxlib.vjp(bmm, x, y)
        results.append((z, *pullback(dz)))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("arg", [0, 1, 2])
@pytest.mark.parametrize("layout", LAYOUTS + ["transposed", "wide_rows", "batch_reversed"])
@pytest.mark.parametrize("shapes", [((3, 4, 5), (3, 5, 6)), ((1, 4, 5), (300, 5, 6))], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_layouts(dtype, shapes, layout, arg):
    args = list(make(*shapes, dtype, seed=1))
    a = args[arg]
    if layout == "transposed":
        a = np.ascontiguousarray(a.swapaxes(1, 2)).swapaxes(1, 2)
    elif layout == "wide_rows":
        wide = np.zeros(a.shape[:2] + (a.shape[2] + 3,), dtype)
        wide[..., : a.shape[2]] = a
        a = wide[..., : a.shape[2]]
    elif layout == "batch_reversed":
        a = np.ascontiguousarray(a[::-1])[::-1]
    else:
        a = with_layout(a, layout)
    laid_out = args[:arg] + [a] + args[arg + 1:]
    check_against_generic(*laid_out)
    z, pullback = luxlib.vjp(bmm, *laid_out[:2])
    z_c, pullback_c = luxlib.vjp(bmm, *args[:2])
    np.testing.assert_array_equal(z, z_c)
    for g, g_c in zip(pullback(laid_out[2]), pullback_c(args[2])):
        np.testing.assert_array_equal(g, g_c)


@pytest.mark.parametrize(
    "make_view, trans",
    [
        (lambda a: a, False),
        (lambda a: np.ascontiguousarray(a.swapaxes(1, 2)).swapaxes(1, 2), True),
        (lambda a: np.zeros((3, 4, 9))[:, :, 2:7], False),  # rows of a wider array
        (lambda a: np.zeros((3, 9, 5))[:, 2:6, :].swapaxes(1, 2).copy().swapaxes(1, 2), True),
        (lambda a: np.zeros((6, 4, 5))[::-2], False),  # any batch stride, negative too
        (lambda a: np.broadcast_to(a[:1], a.shape), False),  # batch stride 0
        (lambda a: np.asfortranarray(a[:1]), True),  # one F-ordered matrix
    ],
)
def test_blas_reads_views_in_place(make_view, trans):
    view = make_view(np.zeros((3, 4, 5)))
    a, t, ld = blas_operand(view)
    assert a is view and t == trans
    rows, cols = view.shape[1:]
    assert ld == (view.strides[1] if not trans else view.strides[2]) // view.itemsize
    assert ld >= (cols if not trans else rows)


@pytest.mark.parametrize("layout", ["F", "strided", "negstride"])
def test_other_strides_are_copied_once(layout):
    view = with_layout(np.arange(60.0).reshape(3, 4, 5), layout)
    a, t, ld = blas_operand(view)
    assert a.flags.c_contiguous and not t and ld == 5
    np.testing.assert_array_equal(a, view)


def test_transposed_operands_reach_blas_uncopied(monkeypatch):
    x, y, dz = make((3, 4, 5), (1, 5, 6), np.float64)
    xt = np.ascontiguousarray(x.swapaxes(1, 2)).swapaxes(1, 2)
    yt = np.ascontiguousarray(y.swapaxes(1, 2)).swapaxes(1, 2)
    seen = []
    real = kernels.gemm_batched

    def spy(*args):
        seen.extend(a for a in args if isinstance(a, np.ndarray))
        return real(*args)

    monkeypatch.setattr(kernels, "gemm_batched", spy)
    z, pullback = luxlib.vjp(bmm, xt, yt)
    pullback(dz)
    # forward, dx (reads y) and dy (reads x)
    assert sum(np.shares_memory(xt, s) for s in seen) == 2
    assert sum(np.shares_memory(yt, s) for s in seen) == 2
    np.testing.assert_allclose(z, x @ y, rtol=1e-12)


@pytest.mark.parametrize("empty_first", [True, False])
def test_pair_computes_the_other_product_when_one_is_empty(empty_first):
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 6))
    out = np.full((3, 4, 6), np.nan)
    full = (a, False, 5, b, False, 6, out)
    empty = (a, False, 5, b[:, :, :0], False, 6, np.empty((3, 4, 0)))  # n = 0
    kernels.gemm_batched_pair(*(empty + full if empty_first else full + empty), 1)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12)


def test_broadcast_sum_is_deterministic(threads):
    x, y, dz = make((1, 8, 9), (600, 9, 7), np.float32, seed=2)
    results = []
    for n in (1, 2, 2):
        threads(n)
        z, pullback = luxlib.vjp(bmm, x, y)
        results.append((z, *pullback(dz)))
    for a, b in zip(results[0], results[1]):
        np.testing.assert_array_equal(a, b)  # the sum runs in batch order whatever the threads
    for a, b in zip(results[1], results[2]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (2, 4, 2)), ((1, 3, 4), (2, 4, 2)), ((2, 3, 4), (1, 4, 2))], ids=str)
def test_gradients_finite_differences(shapes):
    x, y, _ = make(*shapes, np.float64, seed=3)
    with trace() as record:
        check_gradients(bmm, (x, y), expect=[0, 1])
    assert set(record) == {("batched_matmul", "looped")}


def test_nan_inf_propagate():
    x, y, _ = make((300, 3, 4), (300, 4, 5), np.float64)
    x[0, 1, 2], x[1, 0, 0] = np.nan, np.inf
    y[:, 0, :] = 1.0
    z = bmm(x, y)
    assert np.isnan(z[0, 1]).all() and np.isposinf(z[1, 0]).all()
    assert np.isfinite(np.delete(z.reshape(-1, 5), [1, 3], axis=0)).all()


def test_kernel_rejects_mismatched_shapes():
    a, b = np.zeros((2, 3, 4)), np.zeros((2, 4, 5))
    with pytest.raises(ValueError, match="operand shapes do not fit"):
        kernels.gemm_batched(a, False, 4, b[:, :3], False, 5, np.empty((2, 3, 5)), 1)
    with pytest.raises(ValueError, match="batch sizes do not fit"):
        kernels.gemm_batched(a, False, 4, b, False, 5, np.empty((3, 3, 5)), 1)
    pair = (a, False, 4, b, False, 5)
    with pytest.raises(ValueError, match="batches differ, or one is a sum"):
        kernels.gemm_batched_pair(*pair, np.empty((2, 3, 5)), *pair, np.empty((1, 3, 5)), 1)
