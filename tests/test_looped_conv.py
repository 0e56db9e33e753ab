"""The Cython/BLAS convolution kernels against the generic path.

Tolerance: every output and gradient ``a`` of the looped path satisfies
``max|a - ref| <= TOL[dtype] * (1 + max|ref|)`` against the generic path ``ref``
(sums run in a different order): ``1e-12`` in float64, ``2e-5`` in float32 (errors
seen: ~2e-15 and ~5e-7).
"""

import tracemalloc

import numpy as np
import pytest

import luxlib
from luxlib import ConvDims, activations
from luxlib._dispatch import trace
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

import luxlib._looped.conv as glue  # noqa: E402
from luxlib._kernels import conv as kernels  # noqa: E402
from _helpers import ALL_ACTS, BOUND_ACTS, LAYOUTS, assert_unchanged, check_gradients, snapshot, with_layout  # noqa: E402

conv = luxlib.fused_conv_bias_activation
OP = "fused_conv_bias_activation"
DTYPES = [np.float32, np.float64]
TOL = {np.float32: 2e-5, np.float64: 1e-12}

ALL_ACTS = ALL_ACTS
# identity, output-only, input-needing, bound parameter
SOME_ACTS = [activations.identity, activations.relu, activations.gelu, BOUND_ACTS[0]]

# (x shape, w shape, ConvDims options): 1-D/2-D/3-D, every padding form, stride, dilation,
# groups, depthwise (with multiplier), flipped kernels, 1x1 (plain gemm) and 1x1 strided
GEOMETRIES = {
    "1d": ((2, 3, 17), (4, 3, 3), {}),
    "1d-pad-stride-dil": ((2, 3, 17), (5, 3, 4), dict(padding=((3, 1),), stride=3, dilation=2)),
    "1d-flip-same": ((1, 2, 11), (3, 2, 4), dict(padding="same", cross_correlation=False)),
    "2d": ((2, 3, 7, 6), (4, 3, 3, 2), {}),
    "2d-asym": ((2, 3, 7, 6), (4, 3, 3, 2), dict(padding=((1, 2), (0, 3)), stride=(2, 1), dilation=(1, 2))),
    "2d-groups-flip": ((2, 4, 6, 5), (6, 2, 2, 3), dict(padding=1, groups=2, cross_correlation=False)),
    "2d-same-stride": ((3, 3, 9, 8), (4, 3, 3, 3), dict(padding="same", stride=2)),
    "2d-1x1": ((3, 8, 5, 7), (6, 8, 1, 1), {}),
    "2d-1x1-groups": ((3, 8, 5, 7), (8, 2, 1, 1), dict(groups=4)),
    "2d-1x1-stride-pad": ((2, 4, 5, 7), (3, 4, 1, 1), dict(stride=2, padding=(1, 0))),
    "2d-depthwise": ((2, 6, 9, 8), (6, 1, 3, 3), dict(padding=1, groups=6)),
    "2d-depthwise-mult": ((2, 3, 9, 8), (6, 1, 3, 2), dict(padding=((2, 0), (1, 3)), groups=3)),
    "2d-depthwise-flip-stride-dil": (
        (2, 4, 11, 9), (4, 1, 3, 3), dict(stride=(2, 3), dilation=(2, 1), groups=4, cross_correlation=False)
    ),
    # unit-stride depthwise runs the padded flat layout: flipped and dilated, 1-D with a
    # multiplier and padding wider than the kernel, a plane smaller than the kernel
    "2d-depthwise-flip-dil": (
        (2, 5, 7, 10), (5, 1, 3, 2), dict(padding=((2, 1), (0, 2)), dilation=(2, 3), groups=5, cross_correlation=False)
    ),
    "1d-depthwise-mult-wide-pad": ((3, 2, 13), (6, 1, 5), dict(padding=((6, 3),), groups=2)),
    "2d-depthwise-tiny-plane": ((2, 3, 2, 3), (3, 1, 3, 3), dict(padding=3, groups=3)),
    "3d": ((2, 2, 4, 5, 6), (3, 2, 2, 3, 2), dict(padding=(1, 0, (2, 1)), stride=(1, 2, 1))),
    "3d-depthwise": ((2, 3, 5, 4, 6), (3, 1, 2, 2, 3), dict(padding=1, groups=3, dilation=(2, 1, 1))),
    "valid-kernel-covers-input": ((2, 3, 4, 4), (2, 3, 4, 4), dict(padding="valid")),
}


@pytest.fixture
def threads():
    """Set luxlib's thread count for one test."""
    yield luxlib.set_num_threads
    luxlib.set_num_threads(None)


def inputs(xs, ws, dtype, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(xs).astype(dtype)
    w = rng.standard_normal(ws).astype(dtype)
    b = rng.standard_normal(ws[0]).astype(dtype) if bias else None
    return w, x, b


def assert_close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype
    err = np.max(np.abs(got.astype(np.float64) - want), initial=0)
    assert err <= TOL[dtype] * (1 + np.max(np.abs(want), initial=0)), f"max error {err:.3g}"


def compare(act, w, x, b, cd, dtype, seed=1):
    """Looped forward, vjp output and every gradient against the generic path."""
    before = snapshot(w, x, b)
    with trace() as record:
        y = conv(act, w, x, b, cd)
        y2, pullback = luxlib.vjp(conv, act, w, x, b, cd)
        dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
        grads = pullback(dy)
    assert record == [(OP, "looped")] * 2
    with luxlib.backend("generic"):
        ref, ref_pullback = luxlib.vjp(conv, act, w, x, b, cd)
        ref_grads = ref_pullback(dy)
    assert_close(y, ref, dtype)
    np.testing.assert_array_equal(y2, y)
    assert grads[0] is None and (grads[3] is None) == (b is None)
    for g, r in zip(grads[1:], ref_grads[1:]):
        if r is not None:
            assert_close(g, r, dtype)
    assert_unchanged(before, (w, x, b))
    return y, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", SOME_ACTS, ids=repr)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_geometries(geometry, bias, act, dtype):
    xs, ws, options = GEOMETRIES[geometry]
    w, x, b = inputs(xs, ws, dtype, bias)
    compare(act, w, x, b, ConvDims(xs, ws, **options), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ALL_ACTS, ids=repr)
@pytest.mark.parametrize("geometry", ["2d-asym", "2d-depthwise-mult"])
def test_every_activation(geometry, act, dtype):
    xs, ws, options = GEOMETRIES[geometry]
    w, x, b = inputs(xs, ws, dtype)
    compare(act, w, x * 2, b, ConvDims(xs, ws, **options), dtype)


# odd sizes: 1, 3, 17 channels/positions, long 1-D rows (1023, 4097 positions)
ODD = [
    ((1, 1, 1), (1, 1, 1), {}),
    ((1, 3, 3), (17, 3, 3), {}),
    ((3, 17, 1, 17), (3, 17, 1, 3), dict(padding=(0, 1))),
    ((1, 2, 1023), (3, 2, 5), dict(padding=2)),
    ((2, 1, 4097), (2, 1, 3), dict(stride=2)),
    ((1, 17, 4097), (17, 1, 3), dict(padding=1, groups=17)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ODD, ids=str)
def test_odd_sizes(case, dtype):
    xs, ws, options = case
    w, x, b = inputs(xs, ws, dtype)
    compare("gelu", w, x, b, ConvDims(xs, ws, **options), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tile_bytes", [1, 200, 1000])
@pytest.mark.parametrize("geometry", ["1d-pad-stride-dil", "2d-asym", "2d-same-stride", "2d-1x1", "3d"])
def test_small_tiles(geometry, tile_bytes, dtype, monkeypatch):
    """Tiles of 1 and of a few output positions, not dividing the positions or rows."""
    monkeypatch.setattr(glue, "_TILE_BYTES", tile_bytes)
    xs, ws, options = GEOMETRIES[geometry]
    w, x, b = inputs(xs, ws, dtype)
    compare("tanh", w, x, b, ConvDims(xs, ws, **options), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("geometry", ["2d-asym", "2d-1x1", "2d-depthwise"])
def test_layouts(geometry, layout, dtype):
    xs, ws, options = GEOMETRIES[geometry]
    w, x, b = inputs(xs, ws, dtype)
    x, w, b = with_layout(x, layout), with_layout(w, layout), with_layout(b, layout)
    compare(activations.softplus, w, x, b, ConvDims(xs, ws, **options), dtype)


# above the serial threshold (32768 multiply-adds): gemm, 1x1 and depthwise, parallel
LARGE = {
    "gemm": ((5, 8, 17, 15), (8, 4, 3, 3), dict(padding=1, groups=2, stride=(1, 2))),
    "1x1": ((5, 16, 17, 15), (8, 16, 1, 1), {}),
    "depthwise": ((5, 16, 17, 15), (16, 1, 3, 3), dict(padding=1, groups=16, cross_correlation=False)),
    # channel multiplier 2, strided and dilated rows (the non-unit-stride row loops)
    "depthwise-mult-stride": (
        (3, 7, 29, 31), (14, 1, 3, 3), dict(padding=(2, 1), stride=(1, 2), dilation=(2, 1), groups=7)
    ),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(LARGE))
def test_threads(case, dtype, threads):
    xs, ws, options = LARGE[case]
    w, x, b = inputs(xs, ws, dtype)
    cd = ConvDims(xs, ws, **options)
    assert glue._Plan(w, x, cd).nt == luxlib.get_num_threads()  # parallel when allowed
    results = []
    for n in (1, 2):
        threads(n)
        if n == 2 and luxlib.get_num_threads() == 2:
            assert glue._Plan(w, x, cd).nt == 2
        results.append(compare("gelu", w, x, b, cd, dtype))
    (y1, g1), (y2, g2) = results
    # y and dx do not depend on the thread count; dweight/dbias only up to rounding,
    # except depthwise's dweight (one thread sums each channel over the batch)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(g1[2], g2[2])
    assert_close(g2[1], g1[1], dtype)
    if case.startswith("depthwise"):
        np.testing.assert_array_equal(g1[1], g2[1])


def scheme(w, x, cd):
    """The depthwise scheme the kernels run for this call."""
    plan = glue._Plan(w, x, cd)
    return kernels.depthwise_scheme(plan.x.shape, plan.w.shape, plan.y5, *plan.options, plan.flip)


# the direct depthwise scheme (1-D/2-D, unit stride, output rows as wide as the input rows,
# compiled kernel shapes): edge columns and rows, rows narrower than the kernel, asymmetric
# and one-sided paddings (the output taller or shorter than the input), dilation, flip,
# channel multiplier, 5x5, 7x7 and 1-D kernels
DIRECT = {
    "3x3-pad1": ((3, 1, 1), 3, dict(padding=1)),
    "3x3-asym": ((3, 1, 1), 3, dict(padding=((2, 0), (0, 2)))),
    "3x3-rows-unpadded": ((3, 1, 1), 3, dict(padding=((0, 0), (2, 0)))),
    "3x3-tall-pad": ((3, 1, 1), 3, dict(padding=((4, 1), (1, 1)))),
    "3x3-dil-flip-mult": ((3, 2, 1), 3, dict(padding=((1, 3), (2, 2)), dilation=2, cross_correlation=False)),
    "5x5-pad2": ((2, 1, 2), 5, dict(padding=2)),
    "5x5-asym-flip": ((2, 1, 2), 5, dict(padding=((0, 2), (3, 1)), cross_correlation=False)),
    "7x7-pad3": ((2, 1, 3), 7, dict(padding=3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (2, 3), (2, 17), (5, 33), (9, 8)], ids=str)
@pytest.mark.parametrize("case", list(DIRECT))
def test_depthwise_direct(case, hw, dtype):
    (c, mult, n), k, options = DIRECT[case]
    pad = options["padding"]
    lo, hi = pad[0] if isinstance(pad, tuple) else (pad, pad)
    h = max(hw[0], options.get("dilation", 1) * (k - 1) + 1 - lo - hi)  # a positive output height
    xs, ws = (n, c, h, hw[1]), (c * mult, 1, k, k)
    cd = ConvDims(xs, ws, groups=c, **options)
    w, x, b = inputs(xs, ws, dtype)
    assert scheme(w, x, cd) == "direct"
    for act, bias in ((activations.relu, b), (activations.gelu, b), (activations.identity, None)):
        compare(act, w, x, bias, cd, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k, padding", [(3, 1), (3, (0, 2)), (5, 2), (7, 3)])
@pytest.mark.parametrize("length", [1, 2, 17, 1023])
def test_depthwise_direct_1d(length, k, padding, dtype):
    xs, ws = (2, 3, length), (3, 1, k)
    cd = ConvDims(xs, ws, groups=3, padding=(padding,))
    w, x, b = inputs(xs, ws, dtype)
    assert scheme(w, x, cd) == ("direct" if k == 3 else "flat")  # (1, k): 3 is compiled
    compare(activations.swish, w, x, b, cd, dtype)


def test_depthwise_schemes():
    """Forms outside the direct scheme keep the padded flat or per-row ones."""
    cases = [
        ((2, 3, 9, 8), (3, 1, 3, 3), dict(padding=0), "flat"),  # output rows narrower
        ((2, 3, 9, 8), (3, 1, 3, 2), dict(padding=((1, 1), (1, 0))), "flat"),  # 3x2: not compiled
        ((2, 3, 9, 8), (3, 1, 3, 3), dict(padding=1, stride=(2, 1)), "rows"),
        ((2, 3, 5, 4, 6), (3, 1, 1, 3, 3), dict(padding=(0, 1, 1)), "flat"),  # 3-D
    ]
    for xs, ws, options, want in cases:
        w, x, _ = inputs(xs, ws, np.float32)
        assert scheme(w, x, ConvDims(xs, ws, groups=3, **options)) == want


@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_direct_threads(dtype, threads):
    """Above the serial threshold: every output and gradient identical for 1 and 2 threads."""
    xs, ws = (6, 16, 15, 17), (32, 1, 3, 3)
    cd = ConvDims(xs, ws, groups=16, padding=((1, 2), (1, 1)))
    w, x, b = inputs(xs, ws, dtype)
    assert scheme(w, x, cd) == "direct"
    results = []
    for n in (1, 2):
        threads(n)
        assert glue._Plan(w, x, cd).nt == luxlib.get_num_threads()
        results.append(compare("gelu", w, x, b, cd, dtype))
    (y1, g1), (y2, g2) = results
    np.testing.assert_array_equal(y1, y2)
    for a, b_ in zip(g1[1:], g2[1:]):
        np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_direct_in_sample_blocks(dtype, threads):
    """512 channels x (49 + 1) float64 gradient partials per sample: 4 MB hold 20 samples,
    so a batch of 45 runs in blocks of 20, 20 and 5; same results for 1 and 2 threads."""
    xs, ws = (45, 512, 4, 5), (512, 1, 7, 7)
    cd = ConvDims(xs, ws, groups=512, padding=3)
    w, x, b = inputs(xs, ws, dtype)
    assert scheme(w, x, cd) == "direct"
    results = []
    for n in (1, 2):
        threads(n)
        results.append(compare(activations.relu, w, x, b, cd, dtype))
    for a, b_ in zip(results[0][1][1:], results[1][1][1:]):
        np.testing.assert_array_equal(a, b_)


def test_depthwise_direct_nan_inf_stay_in_their_rows():
    """A dropped tap reads the neighbouring row's edge value: Inf/NaN there must not leak."""
    xs, ws = (1, 2, 4, 5), (2, 1, 3, 3)
    w, x, b = inputs(xs, ws, np.float64)
    x[0, 0, 1, 4], x[0, 1, 2, 0] = np.inf, np.nan  # last / first column
    cd = ConvDims(xs, ws, groups=2, padding=1)
    assert scheme(w, x, cd) == "direct"
    y, pullback = luxlib.vjp(conv, "identity", w, x, b, cd)
    dy = np.ones_like(y)
    dy[0, 0, 2, 4], dy[0, 1, 0, 0] = np.inf, np.nan
    dx = pullback(dy)[2]
    with luxlib.backend("generic"), np.errstate(invalid="ignore"):  # its dweight: inf - inf
        ref, ref_pullback = luxlib.vjp(conv, "identity", w, x, b, cd)
        ref_dx = ref_pullback(dy)[2]
    for got, want in ((y, ref), (dx, ref_dx)):
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        assert not np.isfinite(got).all()
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12, atol=1e-12)


def test_small_input_runs_serially():
    xs, ws, options = GEOMETRIES["2d"]
    w, x, _ = inputs(xs, ws, np.float64)
    assert glue._Plan(w, x, ConvDims(xs, ws, **options)).nt == 1


def test_gradients_finite_differences():
    xs, ws, options = GEOMETRIES["2d-groups-flip"]
    w, x, b = inputs(xs, ws, np.float64)
    cd = ConvDims(xs, ws, **options)
    with trace() as record:
        check_gradients(conv, ("gelu", w, x, b, cd), expect=[1, 2, 3])
    assert set(record) == {(OP, "looped")}
    xs, ws, options = GEOMETRIES["2d-depthwise-mult"]
    w, x, b = inputs(xs, ws, np.float64)
    check_gradients(conv, ("softplus", w, x, b, ConvDims(xs, ws, **options)), expect=[1, 2, 3])


def test_nan_inf_propagate():
    xs, ws, options = GEOMETRIES["2d-asym"]
    w, x, b = inputs(xs, ws, np.float64)
    x[0, 1, 2, 3], x[1, 0, 0, 0] = np.nan, np.inf
    cd = ConvDims(xs, ws, **options)
    y = conv("relu", w, x, b, cd)
    with luxlib.backend("generic"):
        ref = conv("relu", w, x, b, cd)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(y).any()
    finite = np.isfinite(ref)
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("xs", [(0, 3, 7, 6), (2, 0, 7, 6)])
def test_zero_size_runs_generic(xs):
    ws = (4, xs[1], 3, 2)
    w, x, b = inputs(xs, ws, np.float32)
    with trace() as record:
        y = conv("sigmoid", w, x, b, ConvDims(xs, ws))
    assert record == [(OP, "generic")]
    assert y.shape == (xs[0], 4, 5, 5)


def test_user_activation_runs_generic():
    xs, ws, _ = GEOMETRIES["2d"]
    w, x, b = inputs(xs, ws, np.float64)
    with trace() as record:
        y = conv(lambda z: z * 2, w, x, b)
    assert record == [(OP, "generic")]
    with luxlib.backend("generic"):
        np.testing.assert_allclose(y, 2 * conv(None, w, x, b), rtol=1e-12)


def _forward_peak(n):
    """Peak traced bytes of a forward conv of batch ``n`` (input already allocated)."""
    xs, ws = (n, 64, 24, 24), (32, 64, 3, 3)
    w, x, b = inputs(xs, ws, np.float32)
    cd = ConvDims(xs, ws, padding=1)
    conv("relu", w, x, b, cd)  # warm up
    tracemalloc.start()
    y = conv("relu", w, x, b, cd)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak - y.nbytes


def test_forward_memory_is_output_plus_bounded_workspace():
    # im2col of one sample is 64*9*576*4 = 1.3 MB; the whole batch of 32 would be 42 MB
    extra = [_forward_peak(n) for n in (2, 32)]
    bound = luxlib.get_num_threads() * glue._TILE_BYTES + (1 << 16)
    assert max(extra) <= bound, extra


@pytest.mark.parametrize("name, output_only", [("relu", True), ("gelu", False)])
def test_pullback_keeps_y_or_z(name, output_only):
    """Output-only activations keep y (no pre-activation array); others keep z, not y."""
    xs, ws, options = GEOMETRIES["2d-asym"]
    w, x, b = inputs(xs, ws, np.float64)
    y, pullback = glue.vjp(activations.get(name), w, x, b, ConvDims(xs, ws, **options))
    kept = [c.cell_contents for c in pullback.__closure__ if isinstance(c.cell_contents, np.ndarray)]
    assert len(kept) == 1 and np.shares_memory(kept[0], y) == output_only


def test_kernel_rejects_bad_arguments():
    w, x, b = inputs((1, 2, 1, 1, 5), (3, 2, 1, 1, 3), np.float64)
    y = np.empty((1, 3, 1, 1, 3))
    opts = ((1, 1, 1), (1, 1, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="activation id"):
        kernels.gemm_forward(99, 0.0, x, w, b, y, y, np.empty((1, 18)), 3, *opts, 1, False, 1)
    with pytest.raises(ValueError, match="workspace"):
        kernels.gemm_forward(1, 0.0, x, w, b, y, y, np.empty((1, 5)), 3, *opts, 1, False, 1)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.gemm_forward(1, 0.0, x, w, b, y[:, :2], y[:, :2], np.empty((1, 18)), 3, *opts, 1, False, 1)
    dw = np.empty((3, 1, 1, 1, 3))
    xd, wd, yd = x[:, :1].repeat(3, axis=1), np.ascontiguousarray(w[:, :1]), np.empty((1, 3, 1, 1, 3))
    with pytest.raises(ValueError, match="do not fit"):
        kernels.depthwise_backward(1, 0.0, yd[:, :2], yd[:, :2], xd, wd, np.empty_like(xd), dw, None,
                                   *opts, False, 1)
    with pytest.raises(ValueError, match="shapes"):
        kernels.depthwise_backward(1, 0.0, yd, np.empty((1, 3, 1, 1, 2)), xd, wd, np.empty_like(xd), dw, None,
                                   *opts, False, 1)
    with pytest.raises(ValueError, match="C_out"):
        kernels.depthwise_backward(1, 0.0, yd, yd, xd, wd, np.empty_like(xd), dw, np.empty(2), *opts, False, 1)
    with pytest.raises(ValueError, match="activation id"):
        kernels.depthwise_backward(99, 0.0, yd, yd, xd, wd, np.empty_like(xd), dw, None, *opts, False, 1)
