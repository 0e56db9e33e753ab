"""Winograd F(2x2, 3x3) of the looped conv (``luxlib/_kernels/winograd.pyx``): the forward,
the data gradient (the forward kernel on the output gradient with the transposed, flipped
weight) and the filter gradient (backpropagated through the Winograd algorithm).

Against the generic path. Tolerance: float64 ``max|a - ref| <= 1e-11 * (1 + max|ref|)``;
float32 elementwise ``|a - ref| <= 16 * eps * (1 + scale)`` where ``scale`` is the same
computation on the magnitudes (Winograd F(2,3) rounds in the transforms too, its error
grows with the magnitudes that enter each element, not with the element itself): for
``y`` ``|x| conv |w| + |bias|``, for ``dx`` and ``dw`` the pullback of ``|x| conv |w|`` at
``|dz|`` (``dz = dy * act'(z)``). Seen: at most 2.3 (y), 2.5 (dx; 9.4 with gelu, whose
``dz`` carries the float32 forward's and derivative's rounding) eps times the scale.
"""

import numpy as np
import pytest

import luxlib
from luxlib import ConvDims, activations
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

import luxlib._looped.conv as glue  # noqa: E402
from luxlib._kernels import winograd  # noqa: E402
from _helpers import BOUND_ACTS, assert_unchanged, snapshot  # noqa: E402
from test_looped_conv import inputs  # noqa: E402

conv = luxlib.fused_conv_bias_activation
DTYPES = [np.float32, np.float64]
ACTS = [activations.identity, activations.relu, activations.gelu, BOUND_ACTS[0]]

# (x shape, w shape, ConvDims options): output sizes 1x1, 2x3, 7x9, even, paddings
# 0/1/2/asymmetric, odd channel counts
GEOMETRIES = {
    "out-1x1": ((2, 3, 3, 3), (5, 3, 3, 3), {}),
    "out-2x3": ((2, 5, 4, 5), (3, 5, 3, 3), {}),
    "out-7x9-pad1": ((3, 7, 7, 9), (5, 7, 3, 3), dict(padding=1)),
    "out-8x6-pad2": ((2, 4, 6, 4), (6, 4, 3, 3), dict(padding=2)),
    "asym-pad": ((2, 3, 9, 6), (4, 3, 3, 3), dict(padding=((1, 2), (0, 3)))),
    "asym-pad-wide": ((1, 2, 5, 4), (3, 2, 3, 3), dict(padding=((3, 0), (4, 1)))),
}


@pytest.fixture(params=["one-band", "row-bands"])
def calls(request, monkeypatch):
    """Winograd for every eligible shape, a sample in one band (these sizes) or in bands of
    one row of tiles; yields the list of the kernel's calls."""
    monkeypatch.setattr(glue, "_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(glue, "_WINOGRAD_MIN_OUT", 1)
    if request.param == "row-bands":
        monkeypatch.setattr(glue, "_WINOGRAD_BAND_BYTES", 1)
        monkeypatch.setattr(glue, "_WINOGRAD_GRAD_BAND_BYTES", 1)
    return _count(monkeypatch)


def _count(monkeypatch):
    """Records ``("forward", x or dz shape)`` and ``("filter_gradient", x shape)``."""
    seen = []
    for name, arg in (("forward", 2), ("filter_gradient", 0)):
        monkeypatch.setattr(winograd, name, _spy(seen, name, arg, getattr(winograd, name)))
    return seen


def _spy(seen, name, arg, kernel):
    def counting(*args):
        seen.append((name, args[arg].shape))
        return kernel(*args)

    return counting


def winograd_calls(xs, ys, forwards=2, dx=True, dw=True):
    """The expected calls of ``forwards`` forwards (a call, then a vjp's) and a pullback."""
    return [("forward", xs)] * forwards + [("filter_gradient", xs)] * dw + [("forward", ys)] * dx


def assert_close(got, want, dtype, scale):
    """The module's tolerance; ``scale()``: the magnitudes that enter each element."""
    assert got.shape == want.shape and got.dtype == want.dtype
    err = np.abs(got.astype(np.float64) - want)
    if dtype == np.float64:
        assert err.max() <= 1e-11 * (1 + np.abs(want).max()), f"max error {err.max():.3g}"
        return
    ratio = (err / (np.finfo(dtype).eps * (1 + scale()))).max()
    assert ratio <= 16, f"error {ratio:.3g} eps * scale"


def y_scale(w, x, b, cd):
    """``|x| conv |w| + |b|`` (generic path, float64)."""
    def scale():
        with luxlib.backend("generic"):
            ab = None if b is None else np.abs(b).astype(np.float64)
            return conv(activations.identity, np.abs(w).astype(np.float64),
                        np.abs(x).astype(np.float64), ab, cd)
    return scale


def grad_scales(act, w, x, b, cd, dy):
    """``(dw scale, dx scale)``: the pullback of ``|x| conv |w|`` at ``|dz|``."""
    def scale(i):
        with luxlib.backend("generic"):
            z = conv(activations.identity, w.astype(np.float64), x.astype(np.float64),
                     None if b is None else b.astype(np.float64), cd)
            dz = dy * act.derivative(x=z)
            _, pullback = luxlib.vjp(conv, activations.identity, np.abs(w).astype(np.float64),
                                     np.abs(x).astype(np.float64), None, cd)
            return pullback(np.abs(dz))[1 + i]
    return (lambda: scale(0)), (lambda: scale(1))


def gradients(act, w, x, b, cd, dy):
    y, pullback = luxlib.vjp(conv, act, w, x, b, cd)
    _, *grads, _ = pullback(dy)  # (weight, x, bias); none for act and cdims
    return y, [g for g in grads if g is not None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS, ids=repr)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_against_generic(geometry, flip, bias, act, dtype, calls):
    xs, ws, options = GEOMETRIES[geometry]
    w, x, b = inputs(xs, ws, dtype, bias)
    cd = ConvDims(xs, ws, cross_correlation=not flip, **options)
    before = snapshot(w, x, b)
    y = conv(act, w, x, b, cd)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    y2, grads = gradients(act, w, x, b, cd, dy)
    assert calls == winograd_calls(xs, y.shape)
    assert_unchanged(before, (w, x, b))
    with luxlib.backend("generic"):
        ref = conv(act, w, x, b, cd)
        _, ref_grads = gradients(act, w, x, b, cd, dy)
    assert_close(y, ref, dtype, y_scale(w, x, b, cd))
    np.testing.assert_array_equal(y2, y)
    for got, want, scale in zip(grads, ref_grads, grad_scales(act, w, x, b, cd, dy)):
        assert_close(got, want, dtype, scale)
    if bias:  # the activation kernel's reduction of dz (dz from Winograd's z)
        tol = 1e-11 if dtype == np.float64 else 2e-5
        assert np.abs(grads[2] - ref_grads[2]).max() <= tol * (1 + np.abs(ref_grads[2]).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads(dtype, calls):
    xs, ws = (5, 16, 17, 15), (18, 16, 3, 3)
    w, x, b = inputs(xs, ws, dtype)
    cd = ConvDims(xs, ws, padding=1)
    dy = np.random.default_rng(1).standard_normal((5, 18, 17, 15)).astype(dtype)
    ys, grads = [], []
    try:
        for n in (1, 2):
            luxlib.set_num_threads(n)
            if luxlib.get_num_threads() == 2:
                assert glue._Plan(w, x, cd).nt == 2
            ys.append(conv(activations.gelu, w, x, b, cd))
            grads.append(gradients(activations.gelu, w, x, b, cd, dy)[1])
    finally:
        luxlib.set_num_threads(None)
    assert calls == winograd_calls(xs, dy.shape) * 2
    # samples are independent of the threads; dw sums per-thread partials (rounding)
    np.testing.assert_array_equal(ys[0], ys[1])
    np.testing.assert_array_equal(grads[0][1], grads[1][1])
    with luxlib.backend("generic"):
        ref = conv(activations.gelu, w, x, b, cd)
        _, ref_grads = gradients(activations.gelu, w, x, b, cd, dy)
    assert_close(ys[0], ref, dtype, y_scale(w, x, b, cd))
    for g in grads:
        for got, want, scale in zip(g, ref_grads, grad_scales(activations.gelu, w, x, b, cd, dy)):
            assert_close(got, want, dtype, scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flip", [False, True])
def test_bands(dtype, flip):
    """Bands of 1, 2, 3 (the last one short) and all 5 rows of tiles, on 1 and 2 threads:
    y the same to the bit (each output is a sum over the input channels, whatever the
    band), dw (summed over bands and threads) within the tolerance of the generic path."""
    xs, ws, lo = (2, 5, 9, 10), (4, 5, 3, 3), (1, 1)
    w, x, _ = inputs(xs, ws, dtype)
    b = np.random.default_rng(3).standard_normal(4).astype(dtype)
    dz = np.random.default_rng(2).standard_normal((2, 4, 9, 10)).astype(dtype)
    ys, dws = [], []
    for rb in (1, 2, 3, 5, 9):
        for nt in (1, 2):
            z, y, dw = np.empty_like(dz), np.empty_like(dz), np.empty_like(w)
            winograd.forward(activations.gelu.id, 0.0, x, w, b, z, y, lo, flip, nt, rb)
            winograd.filter_gradient(x, dz, dw, lo, flip, nt, rb)
            ys.append(np.stack([z, y]))
            dws.append(dw)
    for other in ys[1:]:
        np.testing.assert_array_equal(other, ys[0])
    cd = ConvDims(xs, ws, padding=1, cross_correlation=not flip)
    with luxlib.backend("generic"):
        _, pullback = luxlib.vjp(conv, activations.identity, w, x, None, cd)
        want = pullback(dz)[1]
    _, scale = luxlib.vjp(conv, activations.identity, np.abs(w).astype(np.float64),
                          np.abs(x).astype(np.float64), None, cd)
    for dw in dws:
        assert_close(dw, want, dtype, lambda: scale(np.abs(dz).astype(np.float64))[1])


def test_one_image_runs_on_every_thread(monkeypatch):
    """A batch of one in several bands runs its bands in parallel; the same results."""
    monkeypatch.setattr(glue, "_WINOGRAD_BAND_BYTES", 1)
    monkeypatch.setattr(glue, "_WINOGRAD_GRAD_BAND_BYTES", 1)
    nts = []
    for name in ("forward", "filter_gradient"):
        kernel = getattr(winograd, name)

        def spy(*args, kernel=kernel):
            nts.append(args[-2])
            return kernel(*args)

        monkeypatch.setattr(winograd, name, spy)
    xs, ws = (1, 16, 20, 18), (16, 16, 3, 3)
    w, x, b = inputs(xs, ws, np.float32)
    cd = ConvDims(xs, ws, padding=1)
    dy = np.random.default_rng(1).standard_normal((1, 16, 20, 18)).astype(np.float32)
    results = []
    try:
        for n in (1, 2):
            luxlib.set_num_threads(n)
            results.append(gradients(activations.relu, w, x, b, cd, dy))
    finally:
        luxlib.set_num_threads(None)
    assert nts[:3] == [1, 1, 1]
    if luxlib.get_num_threads() == 2:
        assert nts[3:] == [2, 2, 2]
    (y1, g1), (y2, g2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(g1[1], g2[1])  # dx: a forward, per band
    np.testing.assert_allclose(g1[0], g2[0], rtol=1e-4, atol=1e-4 * np.abs(g1[0]).max())


# default thresholds: (x shape, w shape, options, Winograd forward, Winograd dx expected);
# dx is a 3x3 conv whose output is x: it qualifies on x's size, the forward on y's
DISPATCH = {
    "taken": ((2, 16, 8, 8), (16, 16, 3, 3), dict(padding=1), True, True),
    "taken-flip": ((1, 20, 10, 9), (17, 20, 3, 3), dict(cross_correlation=False, padding=(0, 1)), True, True),
    "few-in-channels": ((2, 15, 8, 8), (16, 15, 3, 3), dict(padding=1), False, False),
    "few-out-channels": ((2, 16, 8, 8), (15, 16, 3, 3), dict(padding=1), False, False),
    "small-output": ((2, 16, 9, 9), (16, 16, 3, 3), {}, False, True),
    "small-input": ((2, 16, 7, 9), (16, 16, 3, 3), dict(padding=2), True, False),
    "stride": ((2, 16, 17, 17), (16, 16, 3, 3), dict(stride=2), False, False),
    "dilation": ((2, 16, 12, 12), (16, 16, 3, 3), dict(dilation=2), False, False),
    "groups": ((2, 32, 10, 10), (32, 16, 3, 3), dict(groups=2), False, False),
    "kernel-3x2": ((2, 16, 10, 10), (16, 16, 3, 2), {}, False, False),
    "1d": ((2, 16, 12), (16, 16, 3), {}, False, False),
    "3d": ((1, 16, 3, 10, 10), (16, 16, 1, 3, 3), {}, False, False),
}


def _spy_gemm_backward(monkeypatch):
    """Records the ``dx`` argument of each ``gemm_backward`` call."""
    seen, kernel = [], glue.kernels.gemm_backward

    def spy(x, w, dz, dx, *rest):
        seen.append(dx)
        return kernel(x, w, dz, dx, *rest)

    monkeypatch.setattr(glue.kernels, "gemm_backward", spy)
    return seen


@pytest.mark.parametrize("case", list(DISPATCH))
def test_dispatch(case, monkeypatch):
    """Winograd dw needs both the forward's and dx's conditions; otherwise the gemm kernel
    computes dw, and dx too unless Winograd does (``dx=None``)."""
    xs, ws, options, forward, data_gradient = DISPATCH[case]
    calls = _count(monkeypatch)
    gemm_dx = _spy_gemm_backward(monkeypatch)
    w, x, b = inputs(xs, ws, np.float64)
    cd = ConvDims(xs, ws, **options)
    dy = np.random.default_rng(1).standard_normal(cd.output_shape)
    y, grads = gradients(activations.relu, w, x, b, cd, dy)
    wino_dw = forward and data_gradient
    assert calls == winograd_calls(xs, dy.shape, int(forward), data_gradient, wino_dw)
    assert len(gemm_dx) == (not wino_dw)
    assert all((dx is None) == data_gradient for dx in gemm_dx)
    with luxlib.backend("generic"):
        ref, ref_grads = gradients(activations.relu, w, x, b, cd, dy)
    assert_close(y, ref, np.float64, None)
    for got, want in zip(grads, ref_grads):
        assert_close(got, want, np.float64, None)


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("pad", [0, 1, 2, ((2, 0), (1, 3))], ids=str)
def test_data_gradient_kernel(pad, flip, monkeypatch):
    """The pullback's dx comes from the Winograd kernel (transposed weight view, flipped
    taps, leading padding 2 - lo); dw from the Winograd filter gradient, no gemm."""
    monkeypatch.setattr(glue, "_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(glue, "_WINOGRAD_MIN_OUT", 1)
    seen = []
    wino = winograd.forward

    def spy_wino(*args):
        seen.append(args)
        return wino(*args)

    monkeypatch.setattr(winograd, "forward", spy_wino)
    gemm_dx = _spy_gemm_backward(monkeypatch)
    xs, ws = (2, 3, 9, 10), (4, 3, 3, 3)
    w, x, _ = inputs(xs, ws, np.float64)
    cd = ConvDims(xs, ws, padding=pad, cross_correlation=not flip)
    dy = np.random.default_rng(1).standard_normal(cd.output_shape)
    _, grads = gradients(activations.identity, w, x, None, cd, dy)
    act_id, _, dz, wt, bias, dx, dx2, lo, flipped, _, _ = seen[-1]
    (lh, _), (lw, _) = cd.padding
    assert len(seen) == 2 and gemm_dx == []
    assert act_id == 0 and bias is None and dx is dx2 and dz.shape == cd.output_shape
    np.testing.assert_array_equal(wt, w.transpose(1, 0, 2, 3))
    assert lo == (2 - lh, 2 - lw) and flipped == (not flip)
    with luxlib.backend("generic"):
        _, want = gradients(activations.identity, w, x, None, cd, dy)
    for got, ref in zip(grads, want):
        assert_close(got, ref, np.float64, None)
    np.testing.assert_array_equal(dx.reshape(xs), grads[1])  # the kernel's output is dx


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_weight(dtype):
    """A transposed weight view is read through its strides: same as a contiguous copy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 9, 8)).astype(dtype)
    wt = rng.standard_normal((6, 5, 3, 3)).astype(dtype).transpose(1, 0, 2, 3)[:, :, ::-1]
    for flip in (False, True):
        y1, y2 = (np.empty((2, 5, 9, 8), dtype) for _ in range(2))
        winograd.forward(0, 0.0, x, wt, None, y1, y1, (1, 1), flip, 1, 2)
        winograd.forward(0, 0.0, x, np.ascontiguousarray(wt), None, y2, y2, (1, 1), flip, 1, 2)
        np.testing.assert_array_equal(y1, y2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_filter_gradient_only(dtype):
    """``gemm_backward(dx=None)`` (Winograd computes dx) gives the same dw, one tile."""
    xs, ws = (2, 3, 1, 9, 8), (4, 3, 1, 3, 3)
    w, x, _ = inputs(xs, ws, dtype)
    dz = np.random.default_rng(1).standard_normal((2, 4, 1, 9, 8)).astype(dtype)
    opts = ((1, 1, 1), (1, 1, 1), (0, 1, 1), 1, False, 1)
    dws = []
    for dx, tiles in ((np.empty_like(x), 2), (None, 1)):
        dw = np.empty_like(w)
        glue.kernels.gemm_backward(x, w, dz, dx, dw, np.empty((1, tiles * 27 * 72), dtype),
                                   np.empty((1, w.size), dtype), 72, *opts)
        dws.append(dw)
    np.testing.assert_array_equal(dws[0], dws[1])
    with pytest.raises(ValueError, match="workspace"):
        glue.kernels.gemm_backward(x, w, dz, np.empty_like(x), dw, np.empty((1, 27 * 72), dtype),
                                   np.empty((1, w.size), dtype), 72, *opts)


def test_kernel_checks():
    x = np.zeros((1, 4, 5, 5))
    w = np.zeros((2, 4, 3, 3))
    y = np.zeros((1, 2, 3, 3))
    winograd.forward(0, 0.0, x, w, None, y, y, (0, 0), False, 1, 1)  # fits
    with pytest.raises(ValueError, match="do not fit"):
        winograd.forward(0, 0.0, x, np.zeros((2, 3, 3, 3)), None, y, y, (0, 0), False, 1, 1)
    with pytest.raises(ValueError, match="do not fit"):
        winograd.forward(0, 0.0, x, w, np.zeros(3), y, y, (0, 0), False, 1, 1)
    with pytest.raises(ValueError, match="do not fit"):
        winograd.forward(0, 0.0, x, w, None, y, np.zeros((1, 2, 3, 2)), (0, 0), False, 1, 1)
    with pytest.raises(ValueError, match="activation"):
        winograd.forward(99, 0.0, x, w, None, y, y, (0, 0), False, 1, 1)
    with pytest.raises(ValueError, match="do not fit"):  # no rows of tiles per band
        winograd.forward(0, 0.0, x, w, None, y, y, (0, 0), False, 1, 0)
    for empty in ((1, 2, 0, 3), (1, 2, 3, 0), (0, 2, 3, 3)):  # nothing to do, no band
        winograd.forward(0, 0.0, x[:empty[0]], w, None, np.zeros(empty), np.zeros(empty), (0, 0), False, 2, 1)


def test_filter_gradient_checks():
    x = np.zeros((2, 4, 5, 5))
    dz = np.zeros((2, 3, 3, 3))
    dw = np.ones((3, 4, 3, 3))
    winograd.filter_gradient(x, dz, dw, (0, 0), False, 2, 1)  # fits
    np.testing.assert_array_equal(dw, 0)
    for bad_dz, bad_dw in (((1, 3, 3, 3), (3, 4, 3, 3)), ((2, 3, 3, 3), (3, 5, 3, 3)),
                           ((2, 3, 3, 3), (3, 4, 3, 2)), ((2, 3, 3, 3), (2, 4, 3, 3))):
        with pytest.raises(ValueError, match="do not fit"):
            winograd.filter_gradient(x, np.zeros(bad_dz), np.zeros(bad_dw), (0, 0), False, 1, 1)
    with pytest.raises(ValueError, match="do not fit"):
        winograd.filter_gradient(x, dz, dw, (0, 0), False, 1, 0)
