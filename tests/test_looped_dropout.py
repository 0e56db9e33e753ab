"""The Cython dropout kernels against the generic path (the Philox reference).

Masks, ``dropout``'s ``y`` and every gradient must be bit-identical to the generic
path for the same rng, for 1 and 2 threads. ``alpha_dropout``'s ``y`` is
``x * A + B`` where kept: identical too when the compiler does not contract it into
an FMA (x86-64 builds); the stated bound is ``2 eps ((|x| + |alpha|) |A| + |B|)``.
"""

import gc
import math
import weakref

import numpy as np
import pytest

import luxlib
from luxlib._dispatch import trace
from luxlib._generic.philox import philox4x32, uniform
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

from luxlib._kernels import dropout as kernels  # noqa: E402
from luxlib._looped.dropout import _threshold  # noqa: E402
from _helpers import LAYOUTS, assert_unchanged, check_gradients, snapshot, with_layout  # noqa: E402

DTYPES = [np.float32, np.float64]
# odd sizes, around the 2048-element work unit and the 32768-element serial threshold
SIZES = [1, 3, 4, 5, 17, 1023, 2047, 2048, 2049, 4097, 32767, 40961]
ALPHA = -1.7580993408473766
PS = [0.0, 0.1, 0.5, 0.9, 1 - 2**-24, 1.0]
# (shape, dims): the mask varies along dims and broadcasts along the other axes
DIMS_CASES = [
    ((3, 4, 5), 0),
    ((3, 4, 5), -1),
    ((3, 4, 5), (0, 2)),
    ((3, 4, 5), 1),
    ((3, 4, 5), ()),
    ((2, 3, 4, 5), (1, 3)),
    ((2, 3, 4, 5), (0, 2)),
    ((2, 1, 4, 1, 5), (0, 4)),
    ((5, 1, 3), 1),
    ((64, 3, 17, 11), (0, 1)),  # above the serial threshold
    ((7, 2051, 3), (0, 2)),  # runs crossing work units
    ((40961, 2), 0),  # a reduced mask above the serial threshold
]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    luxlib.set_num_threads(request.param)
    yield request.param
    luxlib.set_num_threads(None)


def rng_of(seed=0):
    return np.random.default_rng(seed)


def data(shape, dtype=np.float64, seed=1):
    return rng_of(seed).standard_normal(shape).astype(dtype)


def both(f, *args, **kwargs):
    """``(looped, generic)`` results of ``f(*args, **kwargs)``; proves the kernel ran."""
    with trace() as record:
        got = f(*args, **kwargs)
    assert record == [(f.__name__, "looped")]
    with luxlib.backend("generic"), np.errstate(all="ignore"):
        want = f(*args, **kwargs)
    return got, want


def both_vjp(f, dy, *args, **kwargs):
    """``((out, grads), (out, grads))`` of the looped and the generic path."""
    results = []
    for name in ("looped", "generic"):
        with luxlib.backend(name), trace() as record, np.errstate(all="ignore"):
            out, pullback = luxlib.vjp(f, *args, **kwargs)
            results.append((out, pullback(dy)))
        assert record == [(f.__name__, name)]
    return results


def assert_same_rng(a, b):
    assert a.bit_generator.state == b.bit_generator.state


def assert_alpha_close(got, want, x, A, B, alpha=ALPHA):
    """Finite elements within 2 eps ((|x| + |alpha|) |A| + |B|), NaN and Inf at the same places."""
    assert got.dtype == want.dtype and got.shape == want.shape
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    xf = np.where(np.isfinite(x), x, 0)[finite].astype(np.float64)
    bound = 2 * np.finfo(want.dtype).eps * ((np.abs(xf) + abs(alpha)) * abs(A) + abs(B))
    err = np.abs(got[finite].astype(np.float64) - want[finite])
    assert np.all(err <= bound), f"max error {np.max(err - bound):.3g} over the bound"


# ---------------------------------------------------------------- Philox and the threshold


def _reference_blocks(first, n, key):
    b = np.arange(first, first + n, dtype=np.uint64)
    zero = np.zeros(n, np.uint32)
    ref = philox4x32(((b & 0xFFFFFFFF).astype(np.uint32), (b >> 32).astype(np.uint32), zero, zero), key)
    return np.stack(ref, axis=-1)


# every version of the bulk generator (the SIMD loops do 16 or 32 blocks at a time and leave
# the rest to the scalar block function): sizes around those, runs ending at 2**32, high words
@pytest.mark.parametrize("isa", list(kernels.PHILOX_ISAS))
@pytest.mark.parametrize(
    "first, n",
    [(0, 1), (0, 15), (0, 16), (0, 17), (3, 31), (3, 32), (5, 33), (0, 1031), (2**32 - 7, 7),
     (2**32 - 64, 64), (2**32 + 5, 9), (2**40 + 3, 100), (2**64 - 2**32, 47)],
)
def test_philox_blocks_match_reference(isa, first, n):
    if not kernels.philox_isa_supported(isa):
        pytest.skip(f"this build or CPU has no {isa} generator")
    key = (0x9E3779B9, 0x243F6A88)
    np.testing.assert_array_equal(kernels.philox_blocks(first, n, *key, isa=isa), _reference_blocks(first, n, key))


def test_philox_blocks_known_answer_and_errors():
    # Random123 known answer (counter 0, key 0)
    assert kernels.philox_blocks(0, 1, 0, 0).tolist() == [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]]
    assert kernels.philox_isa_supported("best") and kernels.philox_isa_supported("scalar")
    with pytest.raises(ValueError, match="2\\*\\*32"):
        kernels.philox_blocks(2**32 - 2, 3, 0, 0)
    with pytest.raises(ValueError, match="instruction set 'sse9'"):
        kernels.philox_blocks(0, 1, 0, 0, isa="sse9")


@pytest.fixture(params=list(kernels.PHILOX_ISAS))
def isa(request):
    """Every version of the generator this CPU runs, in every kernel (float32 on AVX-512
    makes its words in registers, the others go through the word buffer)."""
    if not kernels.philox_isa_supported(request.param):
        pytest.skip(f"this build or CPU has no {request.param} generator")
    kernels.set_philox_isa(request.param)
    yield request.param
    kernels.set_philox_isa("best")


# around the 128-element step of the in-register path, the 256-element pieces and the
# 2048-element units; 40961 runs on two threads
@pytest.mark.parametrize("size", [1, 127, 128, 129, 255, 257, 2049, 2048 + 129, 40961])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_generator_gives_the_generic_masks(isa, dtype, size, threads):
    x, dy = data(size, dtype), data(size, dtype, seed=2)
    for p in (0.1, 0.5):
        (y, mask, _), (y_ref, mask_ref, _) = both(luxlib.dropout, rng_of(size), x, p, True)
        np.testing.assert_array_equal(mask, mask_ref)
        np.testing.assert_array_equal(y, y_ref)
        (looped, grads), (generic, grads_ref) = both_vjp(luxlib.alpha_dropout, dy, rng_of(size), x, p, True)
        A = 1 / math.sqrt((1 - p) * (1 + p * ALPHA**2))
        assert_alpha_close(looped[0], generic[0], x, A, -A * ALPHA * p)
        np.testing.assert_array_equal(grads[1], grads_ref[1])
        np.testing.assert_array_equal(luxlib.alpha_dropout(rng_of(size), x, p, True)[0], looped[0])


def test_set_philox_isa_rejects_unknown():
    with pytest.raises(ValueError, match="instruction set 'sse9'"):
        kernels.set_philox_isa("sse9")


@pytest.mark.parametrize(
    "p",
    [0.0, 2**-24, 2**-25, 5e-324, 0.1, 1 / 3, 0.5, 0.5 - 2**-53, 0.5 + 2**-53, 0.7, 1 - 2**-24,
     1 - 2**-53, 1.0, float(np.float32(0.1)), 1234567 * 2**-24, np.nextafter(1234567 * 2**-24, 0)],
)
def test_integer_threshold_is_the_float64_comparison(p):
    # every 24-bit value of word >> 8: (bits > thr) == (bits * 2**-24 > p)
    bits = np.arange(2**24, dtype=np.int64)
    np.testing.assert_array_equal(bits > _threshold(p), bits * 2.0**-24 > p)


# ---------------------------------------------------------------- dropout


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dropout_bit_identical(dtype, size, p, threads):
    rng, x = rng_of(size), data(size, dtype)
    before = snapshot(x)
    (y, mask, rng2), (y_ref, mask_ref, rng2_ref) = both(luxlib.dropout, rng, x, p, True)
    assert_unchanged(before, [x])
    assert y.dtype == mask.dtype == dtype
    np.testing.assert_array_equal(mask, mask_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert_same_rng(rng2, rng2_ref)


@pytest.mark.parametrize("shape, dims", DIMS_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dropout_dims_bit_identical(dtype, shape, dims, threads):
    x = data(shape, dtype)
    dy = data(shape, dtype, seed=2)
    (looped, grads), (generic, grads_ref) = both_vjp(luxlib.dropout, dy, rng_of(7), x, 0.4, True,
                                                     dims=dims)
    assert looped[1].shape == generic[1].shape
    np.testing.assert_array_equal(looped[1], generic[1])
    np.testing.assert_array_equal(looped[0], generic[0])
    np.testing.assert_array_equal(grads[1], grads_ref[1])
    # the reused mask takes the broadcast-multiply kernel too
    mask = np.where(data(generic[1].shape, seed=3) > 0, dtype(3), dtype(0))
    kw = {"dims": dims, "mask": mask, "update_mask": False}
    (y, m, rng), (y_ref, _, _) = both(luxlib.dropout, rng_of(7), x, 0.4, True, **kw)
    assert m is mask
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(y, x * mask)  # independent formula


def test_dropout_dims_all_subsets():
    x = data((2, 3, 1, 4, 5))
    for bits in range(2**x.ndim):
        dims = tuple(a for a in range(x.ndim) if bits >> a & 1)
        (y, mask, _), (y_ref, mask_ref, _) = both(luxlib.dropout, rng_of(bits), x, 0.5, True,
                                                  dims=dims)
        np.testing.assert_array_equal(mask, mask_ref)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(y, x * mask)


@pytest.mark.parametrize("dims", [None, 0, (1, 2)], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dropout_layouts(dtype, layout, dims):
    x, dy = data((5, 7, 9), dtype), data((5, 7, 9), dtype, seed=2)
    xl, dyl = with_layout(x, layout), with_layout(dy, layout)
    before = snapshot(xl, dyl)
    (looped, grads), (generic, grads_ref) = both_vjp(luxlib.dropout, dyl, rng_of(), xl, 0.5, True,
                                                     dims=dims)
    assert_unchanged(before, [xl, dyl])
    for got, want in zip(looped[:2] + grads[1:2], generic[:2] + grads_ref[1:2]):
        np.testing.assert_array_equal(got, want)
    # a reused mask in the layout
    ml = with_layout(generic[1], layout)
    kw = {"dims": dims, "mask": ml, "update_mask": False}
    (y, _, _), (y_ref, _, _) = both(luxlib.dropout, rng_of(), x, 0.5, True, **kw)
    np.testing.assert_array_equal(y, y_ref)


@pytest.mark.parametrize("dims", [None, 1, ()], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dropout_empty(dtype, dims):
    x = np.zeros((0, 3), dtype)
    (y, mask, rng), (y_ref, mask_ref, rng_ref) = both(luxlib.dropout, rng_of(), x, 0.5, True,
                                                      dims=dims)
    assert y.shape == (0, 3) and mask.shape == mask_ref.shape and y.dtype == mask.dtype == dtype
    np.testing.assert_array_equal(mask, mask_ref)
    assert_same_rng(rng, rng_ref)


def test_dropout_nan_inf_and_scalars():
    x = data((4, 9))
    x[0] = np.nan
    x[1] = np.inf
    (y, mask, _), (y_ref, _, _) = both(luxlib.dropout, rng_of(), x, 0.5, True, 4.0)
    np.testing.assert_array_equal(y, y_ref)
    assert np.isnan(y[1][mask[1] == 0]).all() and np.isinf(y[1][mask[1] != 0]).all()
    # invp = inf (p = 1 default) never reaches the mask: nothing is kept
    (y, mask, _), (y_ref, mask_ref, _) = both(luxlib.dropout, rng_of(), x[2:], 1.0, True)
    np.testing.assert_array_equal(mask, np.zeros_like(mask))
    np.testing.assert_array_equal(y, y_ref)
    (y, mask, _), (y_ref, mask_ref, _) = both(luxlib.dropout, rng_of(), np.array(2.0), 0.5, True)
    assert y.shape == mask.shape == ()
    np.testing.assert_array_equal(mask, mask_ref)


@pytest.mark.parametrize("dims", [None, 0, (0, 2)], ids=str)
def test_dropout_gradients_finite_differences(dims):
    x = data((2, 3, 4))
    with trace() as record:
        check_gradients(luxlib.dropout, (rng_of(), x, 0.5, True), {"dims": dims}, expect=[1])
    assert set(record) == {("dropout", "looped")}


def test_not_training_runs_generic():
    # not training is the identity: the kernels decline it (documented fallback)
    x = data((3, 4), np.float32)
    with trace() as record:
        y, mask, _ = luxlib.dropout(rng_of(), x, 0.5, False)
        z, _ = luxlib.alpha_dropout(rng_of(), x, 0.5, False)
    assert record == [("dropout", "generic"), ("alpha_dropout", "generic")]
    assert y is x and mask is x and z is x


# ---------------------------------------------------------------- alpha_dropout


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_alpha_dropout_matches_generic(dtype, size, p, threads):
    x, dy = data(size, dtype), data(size, dtype, seed=2)
    before = snapshot(x, dy)
    rng = rng_of(size)
    (looped, grads), (generic, grads_ref) = both_vjp(luxlib.alpha_dropout, dy, rng, x, p, True)
    assert_unchanged(before, [x, dy])
    A = 1 / math.sqrt((1 - p) * (1 + p * ALPHA**2)) if p < 1 else 0.0
    assert_alpha_close(looped[0], generic[0], x, A, -A * ALPHA * p)
    # the keep decisions are bit-identical: dx = (dy * keep) * A rounds like the generic path
    np.testing.assert_array_equal(grads[1], grads_ref[1])
    assert_same_rng(looped[1], generic[1])
    # the forward alone (no keep decisions stored) gives the same y
    np.testing.assert_array_equal(luxlib.alpha_dropout(rng, x, p, True)[0], looped[0])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_alpha_dropout_constants_and_nan(dtype):
    x = data((33, 65), dtype)
    x[0] = np.nan
    x[1] = -np.inf
    p, alpha, A, B = 0.3, -1.25, 1.7, -0.2
    (y, _), (y_ref, _) = both(luxlib.alpha_dropout, rng_of(5), x, p, True, alpha, A, B)
    assert_alpha_close(y, y_ref, x, A, B, alpha)
    keep = uniform_keep(rng_of(5), x.shape, p)
    # independent formula on the dropped elements: exactly alpha * A + B in the dtype
    np.testing.assert_array_equal(y[~keep], dtype(alpha) * dtype(A) + dtype(B))
    assert np.isnan(y[0][keep[0]]).all()


def uniform_keep(rng, shape, p):
    """``u > p`` from the Philox reference, with the key drawn as doc/dropout.md says."""
    seed = int(rng.integers(0, 2**64, dtype=np.uint64))
    return uniform((seed & 0xFFFFFFFF, seed >> 32), shape) > p


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_alpha_dropout_layouts(dtype, layout):
    x, dy = data((6, 5, 7), dtype), data((6, 5, 7), dtype, seed=2)
    xl, dyl = with_layout(x, layout), with_layout(dy, layout)
    before = snapshot(xl, dyl)
    (looped, grads), (generic, grads_ref) = both_vjp(luxlib.alpha_dropout, dyl, rng_of(), xl, 0.5,
                                                     True)
    assert_unchanged(before, [xl, dyl])
    c_order = luxlib.alpha_dropout(rng_of(), x, 0.5, True)[0]
    np.testing.assert_array_equal(looped[0], c_order)
    np.testing.assert_array_equal(grads[1], grads_ref[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_alpha_dropout_empty(dtype):
    x = np.zeros((2, 0, 3), dtype)
    (looped, grads), (generic, _) = both_vjp(luxlib.alpha_dropout, x, rng_of(), x, 0.5, True)
    assert looped[0].shape == x.shape and looped[0].dtype == dtype and grads[1].shape == x.shape
    assert_same_rng(looped[1], generic[1])


def test_alpha_dropout_gradients_finite_differences():
    x = data((3, 7))
    with trace() as record:
        check_gradients(luxlib.alpha_dropout, (rng_of(), x, 0.3, True), expect=[1])
        args = (rng_of(1), x, 0.6, None, -1.0, 2.0, 0.5)  # training=None under vjp, own constants
        check_gradients(luxlib.alpha_dropout, args, expect=[1])
    assert set(record) == {("alpha_dropout", "looped")}


def test_alpha_dropout_pullback_keeps_neither_x_nor_y():
    x = data((50, 40))
    ref = weakref.ref(x)
    (y, _), pullback = luxlib.vjp(luxlib.alpha_dropout, rng_of(), x, 0.5, True)
    y_ref = weakref.ref(y)
    dy = np.ones_like(y)
    del x, y
    gc.collect()
    assert ref() is None and y_ref() is None  # only the keep decisions are kept
    keep = uniform_keep(rng_of(), (50, 40), 0.5)
    A = 1 / math.sqrt(0.5 * (1 + 0.5 * ALPHA**2))
    np.testing.assert_array_equal(pullback(dy)[1], np.where(keep, A, 0.0))


# ---------------------------------------------------------------- threads and kernel checks


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_thread_count_independence(dtype):
    x, dy = data((3, 40961), dtype), data((3, 40961), dtype, seed=2)
    results = []
    for n in (1, 2, 2):
        luxlib.set_num_threads(n)
        try:
            for f, kw in ((luxlib.dropout, {}), (luxlib.dropout, {"dims": 1}), (luxlib.alpha_dropout, {})):
                out, pullback = luxlib.vjp(f, rng_of(3), x, 0.3, True, **kw)
                results.append((out[0], pullback(dy)[1]))
        finally:
            luxlib.set_num_threads(None)
    for k in range(3, len(results)):  # results[k] repeats results[k % 3] on other threads
        for got, want in zip(results[k], results[k % 3]):
            np.testing.assert_array_equal(got, want)


def test_kernel_argument_checks():
    m = np.empty(8, np.float32)
    with pytest.raises(ValueError, match="y must have 8 elements"):
        kernels.dropout(0, 0, 0, 2.0, m, np.empty(8, np.float32), np.empty(7, np.float32))
    with pytest.raises(ValueError, match="dx must have 8 elements"):
        kernels.alpha_dropout_backward(np.ones(8, np.uint8), 1.0, m, np.empty(9, np.float32))
    with pytest.raises(ValueError, match="keep must have 8 elements"):
        kernels.alpha_dropout(0, 0, 0, -1.0, 1.0, 0.0, m, m.copy(), np.empty(4, np.uint8))
    lengths, strides = np.array([2], np.intp), np.array([4], np.intp)
    with pytest.raises(ValueError, match="m must have 8 elements"):
        kernels.broadcast_multiply(m, m[:5], m.copy(), lengths, strides, 4, True)
    with pytest.raises(ValueError, match="do not hold 8 elements"):
        kernels.broadcast_multiply(m, m, m.copy(), lengths, strides, 3, True)
