"""The GPU path's products (``luxlib/cuda/_blas.py``) on the emulated cuBLAS
(``tests/cuda/emu/emu_blas.py``), and the emulation itself.

The front end must hand cuBLAS every operand as it is stored (transposed views by the
flag, a batch of 1 by stride 0, no copies), fold a broadcast ``B`` into one gemm, and get
the same numbers as ``numpy.matmul``; the emulation must refuse what cuBLAS refuses and
what would read or write out of bounds on a GPU.
"""

import emu_blas
import numpy as np
import pytest

from luxlib.cuda import _blas


def randn(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def tol(dtype):
    return {np.float16: 2e-2, np.float32: 1e-5, np.float64: 1e-12}[np.dtype(dtype).type]


# ---- the emulation ---------------------------------------------------------------------


def test_emulation_is_column_major_cublas():
    """op(A) op(B) on Fortran-ordered matrices, with the transpose flags and a batch stride."""
    rng = np.random.default_rng(0)
    a = np.asfortranarray(randn(rng, (3, 4)))  # column-major 3 x 4, ld 3
    bt = np.asfortranarray(randn(rng, (5, 4)))  # op(B) = bt^T: 4 x 5, ld 5
    c = np.zeros((2, 5, 3)).transpose(0, 2, 1)  # two column-major 3 x 5 results, ld 3, stride 15
    emu_blas.EmuBLAS().gemm_strided_batched(False, True, 3, 5, 4, a, 3, 0, bt, 5, 0, False, c, 3, 15, 2)
    np.testing.assert_allclose(c[0], a @ bt.T, rtol=1e-12)
    np.testing.assert_allclose(c[1], a @ bt.T, rtol=1e-12)


@pytest.mark.parametrize("bad, message", [
    (dict(lda=2), "leading dimensions"),  # below the 3 rows of A
    (dict(ldc=2), "leading dimensions"),
    (dict(stride_a=12, batch=2), "outside the array's memory"),  # a holds one matrix
    (dict(lda=4), "outside the array's memory"),  # the last column runs past the end
    (dict(stride_c=0, batch=2, stride_a=0, stride_b=0), "overlap"),  # both products into one C
    (dict(m=-1), "32-bit"),
    (dict(batch=2**31), "32-bit"),
])
def test_emulation_refuses_bad_arguments(bad, message):
    """What cuBLAS refuses, and what would read or write out of bounds (tests of the harness)."""
    a, b, c = np.ones((4, 3)), np.ones((5, 4)), np.zeros((2, 5, 3))
    args = dict(trans_a=False, trans_b=False, m=3, n=5, k=4, a=a, lda=3, stride_a=0, b=b, ldb=4, stride_b=0,
                accumulate=False, c=c, ldc=3, stride_c=15, batch=1)
    args.update(bad)
    with pytest.raises(emu_blas.BlasError, match=message):
        emu_blas.EmuBLAS().gemm_strided_batched(**args)


def test_emulation_refuses_mixed_dtypes():
    a, c = np.ones((2, 2), np.float32), np.zeros((2, 2))
    with pytest.raises(emu_blas.BlasError, match="dtypes"):
        emu_blas.EmuBLAS().gemm_strided_batched(False, False, 2, 2, 2, a, 2, 0, a, 2, 0, False, c, 2, 0, 1)


# ---- the front end -------------------------------------------------------------------


def _layout(rng, shape, form, dtype, xp=np):
    """An ``xp`` array of ``shape`` stored as ``form``: C order, transposed matrices (a
    ``.T`` view), rows with a gap (a leading dimension above the row length), a reversed
    batch, or strided columns (neither BLAS form: copied)."""
    def new(s):
        return xp.asarray(randn(rng, s, dtype))

    if form == "c":
        return new(shape)
    if form == "t":
        return new(shape[:-2] + shape[-2:][::-1]).swapaxes(-1, -2)
    if form == "gap":
        return new(shape[:-1] + (shape[-1] + 3,))[..., : shape[-1]]
    if form == "reversed":
        return new(shape)[::-1]
    if form == "strided":
        return new(shape[:-1] + (2 * shape[-1],))[..., ::2]
    raise ValueError(form)


FORMS = ["c", "t", "gap", "reversed", "strided"]
#: (a shape, b shape): equal batches, each side broadcast, 2-D operands, single rows and
#: columns, odd sizes
SHAPES = [
    ((3, 4, 5), (3, 5, 6)),
    ((1, 4, 5), (3, 5, 2)),
    ((3, 4, 5), (1, 5, 2)),
    ((4, 5), (3, 5, 7)),
    ((3, 1, 5), (5, 1)),
    ((7, 9), (9, 1)),
    ((2, 17, 1), (2, 1, 3)),
]


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("form_b", FORMS)
@pytest.mark.parametrize("form_a", FORMS)
def test_matmul_matches_numpy(form_a, form_b, shapes):
    rng = np.random.default_rng(len(form_a) + 3 * len(form_b))
    a, b = _layout(rng, shapes[0], form_a, np.float64), _layout(rng, shapes[1], form_b, np.float64)
    keep = a.copy(), b.copy()
    got = _blas.matmul(emu_blas.EmuBLAS(), a, b)
    want = np.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(a, keep[0])
    np.testing.assert_array_equal(b, keep[1])


class _Spy(emu_blas.EmuBLAS):
    """The emulation, recording every call's arguments (arrays as their addresses)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def gemm_strided_batched(self, *args):
        self.seen.append(tuple(a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a for a in args))
        super().gemm_strided_batched(*args)


@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("form_b", FORMS)
@pytest.mark.parametrize("form_a", FORMS)
def test_matmul_transpose_flags(form_a, form_b, shapes):
    """``transpose_a``/``transpose_b`` on the transposed storage give what the operands'
    ``swapaxes`` views give: the same cuBLAS calls and bit-identical results (copies where
    the storage is no BLAS form; through the namespace beyond cuBLAS's ints)."""
    rng = np.random.default_rng(len(form_a) + 3 * len(form_b))
    a, b = _layout(rng, shapes[0], form_a, np.float64), _layout(rng, shapes[1], form_b, np.float64)
    at, bt = a.swapaxes(-1, -2), b.swapaxes(-1, -2)  # what the flags are given
    for flags in ((True, False), (False, True), (True, True)):
        args = (at if flags[0] else a, bt if flags[1] else b)
        views, flagged = _Spy(), _Spy()
        want = _blas.matmul(views, a, b)
        got = _blas.matmul(flagged, *args, transpose_a=flags[0], transpose_b=flags[1])
        np.testing.assert_array_equal(got, want)
        scalars = lambda spy: [c[:5] + c[6:8] + c[9:12] + c[13:] for c in spy.seen]  # noqa: E731 (not the arrays)
        assert scalars(flagged) == scalars(views)
    out = np.zeros(np.matmul(a, b).shape, np.float32)  # float64 products summed into float32
    np.testing.assert_array_equal(_blas.matmul(_Spy(), at, bt, out=out, transpose_a=True, transpose_b=True),
                                  np.matmul(a, b).astype(np.float32))


def test_matmul_transpose_flags_beyond_cublas_ints(monkeypatch):
    blas = emu_blas.EmuBLAS()
    monkeypatch.setattr(_blas, "INT_MAX", 4)
    rng = np.random.default_rng(5)
    a, b = randn(rng, (2, 5, 3)), randn(rng, (2, 2, 5))
    got = _blas.matmul(blas, a, b, transpose_a=True, transpose_b=True)
    np.testing.assert_array_equal(got, np.matmul(a.swapaxes(1, 2), b.swapaxes(1, 2)))
    assert blas.calls == []


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
def test_matmul_dtypes_and_accumulate(dtype):
    rng = np.random.default_rng(1)
    a, b = randn(rng, (3, 4, 6), dtype), randn(rng, (3, 5, 6), dtype).swapaxes(1, 2)  # b transposed
    start = randn(rng, (3, 4, 5), dtype)
    out = start.copy()
    assert _blas.matmul(emu_blas.EmuBLAS(), a, b, out=out, accumulate=True) is out
    want = start.astype(np.float64) + np.matmul(a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=tol(dtype), atol=tol(dtype) * 8)


def test_matmul_operands_go_to_cublas_as_stored():
    """Transposed views, broadcast batches, rows with a gap and a strided output: passed
    in place (the arrays handed to cuBLAS share the inputs' memory), one call each."""
    rng = np.random.default_rng(2)
    a = randn(rng, (1, 6, 4)).swapaxes(1, 2)  # (1, 4, 6), transposed, broadcast
    b = randn(rng, (3, 6, 9))[..., :5]  # (3, 6, 5), row stride 9
    out = np.zeros((3, 2, 4, 5))[:, 1]  # batch stride 40
    seen = []

    class Spy(emu_blas.EmuBLAS):
        def gemm_strided_batched(self, *args):
            seen.append(args)
            super().gemm_strided_batched(*args)

    _blas.matmul(Spy(), a, b, out=out)
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12)
    (tb, ta, m, n, k, b_arg, ldb, sb, a_arg, lda, sa, acc, c_arg, ldc, sc, batch), = seen
    assert (tb, ta, m, n, k, batch) == (False, True, 5, 4, 6, 3)
    assert (ldb, sb, lda, sa, ldc, sc) == (9, 54, 4, 0, 5, 40)
    assert np.shares_memory(a_arg, a) and np.shares_memory(b_arg, b) and np.shares_memory(c_arg, out)


def test_matmul_folds_a_broadcast_b_into_one_gemm():
    blas = emu_blas.EmuBLAS()
    rng = np.random.default_rng(3)
    a, b = randn(rng, (5, 3, 4)), randn(rng, (1, 4, 2))
    np.testing.assert_allclose(_blas.matmul(blas, a, b), np.matmul(a, b), rtol=1e-12)
    assert blas.calls == [(2, 15, 4, 1)]  # m = N, n = 5 * 3 rows, one product
    blas.calls.clear()
    _blas.matmul(blas, a.swapaxes(1, 2).copy().swapaxes(1, 2), b)  # transposed a: no fold
    assert blas.calls == [(2, 3, 4, 5)]
    blas.calls.clear()
    out = np.zeros((5, 2, 3, 2))[:, 1]  # outputs apart: no fold either
    np.testing.assert_allclose(_blas.matmul(blas, a, b, out=out), np.matmul(a, b), rtol=1e-12)
    assert blas.calls == [(2, 3, 4, 5)]


def test_matmul_mixed_output_dtype_sums_in_the_output():
    """float16 products into a float32 sum (the conv weight gradient): a product, then its sum."""
    rng = np.random.default_rng(4)
    a, b = randn(rng, (2, 3, 4), np.float16), randn(rng, (2, 4, 5), np.float16)
    out = np.ones((2, 3, 5), np.float32)
    _blas.matmul(emu_blas.EmuBLAS(), a, b, out=out, accumulate=True)
    np.testing.assert_allclose(out, 1 + np.matmul(a.astype(np.float32), b.astype(np.float32)), rtol=2e-3, atol=2e-2)


def test_matmul_empty_and_k0():
    blas = emu_blas.EmuBLAS()
    assert _blas.matmul(blas, np.ones((0, 2, 3)), np.ones((1, 3, 4))).shape == (0, 2, 4)
    out = np.full((2, 3), 7.0)
    _blas.matmul(blas, np.ones((2, 0)), np.ones((0, 3)), out=out, accumulate=True)  # adds an empty sum
    np.testing.assert_array_equal(out, 7)
    np.testing.assert_array_equal(_blas.matmul(blas, np.ones((2, 0)), np.ones((0, 3)), out=out), 0)
    assert blas.calls == []


def test_matmul_beyond_cublas_ints_uses_the_namespace(monkeypatch):
    blas = emu_blas.EmuBLAS()
    monkeypatch.setattr(_blas, "INT_MAX", 4)
    rng = np.random.default_rng(5)
    a, b = randn(rng, (2, 3, 5)), randn(rng, (2, 5, 2))
    np.testing.assert_allclose(_blas.matmul(blas, a, b), np.matmul(a, b), rtol=1e-12)
    assert blas.calls == []


def test_matmul_refuses_an_output_of_another_shape():
    with pytest.raises(ValueError, match="out has shape"):
        _blas.matmul(emu_blas.EmuBLAS(), np.ones((3, 2, 4)), np.ones((3, 4, 5)), out=np.empty((1, 2, 5)))


def test_matmul_overlapping_outputs_are_not_handed_to_cublas():
    """Output matrices that overlap (here: the batch stride of one row) would be written by
    concurrent products; the product goes to the namespace's assignment instead."""
    blas = emu_blas.EmuBLAS()
    buf = np.zeros(4 * 3)  # rows 0-3 of 3 elements; matrix i is rows i and i + 1
    out = np.lib.stride_tricks.as_strided(buf, (3, 2, 3), (3 * 8, 3 * 8, 8))
    a, b = np.ones((3, 2, 4)), np.ones((3, 4, 3))
    _blas.matmul(blas, a, b, out=out)
    assert blas.calls == [(3, 2, 4, 3)]  # the product, into a new array
    np.testing.assert_array_equal(buf, 4)


def test_matmul_refuses_mixed_operands():
    with pytest.raises(ValueError, match="dtypes differ"):
        _blas.matmul(emu_blas.EmuBLAS(), np.ones((2, 2), np.float32), np.ones((2, 2)))


# ---- on a GPU: the same layouts through cuBLAS itself ----------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("form_b", FORMS)
@pytest.mark.parametrize("form_a", FORMS)
def test_matmul_on_gpu(cp, form_a, form_b, shapes):
    rng = np.random.default_rng(len(form_a) + 3 * len(form_b))
    a, b = (_layout(rng, shape, form, np.float32, cp) for shape, form in zip(shapes, (form_a, form_b)))
    got = _blas.matmul(_blas.get_blas(), a, b)
    want = np.matmul(cp.asnumpy(a).astype(np.float64), cp.asnumpy(b).astype(np.float64))
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=tol(np.float32), atol=tol(np.float32) * 8)


@pytest.mark.gpu
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_matmul_transpose_flags_on_gpu(cp, form, shapes):
    """The transpose flags on the transposed storage give the views' results bit for bit."""
    rng = np.random.default_rng(len(form))
    a, b = (_layout(rng, shape, form, np.float32, cp) for shape in shapes)
    blas = _blas.get_blas()
    want = _blas.matmul(blas, a, b)
    got = _blas.matmul(blas, a.swapaxes(-1, -2), b.swapaxes(-1, -2), transpose_a=True, transpose_b=True)
    cp.testing.assert_array_equal(got, want)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
def test_matmul_accumulates_into_a_strided_output_on_gpu(cp, dtype):
    rng = np.random.default_rng(6)
    a, b = _layout(rng, (3, 4, 6), "c", dtype, cp), _layout(rng, (1, 6, 5), "t", dtype, cp)
    out = cp.asarray(randn(rng, (3, 2, 4, 5), dtype))[:, 1]
    start = cp.asnumpy(out).astype(np.float64)
    _blas.matmul(_blas.get_blas(), a, b, out=out, accumulate=True)
    want = start + np.matmul(cp.asnumpy(a).astype(np.float64), cp.asnumpy(b).astype(np.float64))
    np.testing.assert_allclose(cp.asnumpy(out), want, rtol=tol(dtype), atol=tol(dtype) * 8)
