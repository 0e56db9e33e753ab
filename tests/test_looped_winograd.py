"""Winograd F(2x2, 3x3) forward of the looped conv (``luxlib/_kernels/winograd.pyx``).

Against the generic path. Tolerance: float64 ``max|y - ref| <= 1e-11 * (1 + max|ref|)``;
float32 elementwise ``|y - ref| <= 16 * eps * (1 + (|x| conv |w|) + |bias|)`` (Winograd
F(2,3) rounds in the transforms too, its error grows with the magnitudes that enter each
output, not with the output itself; seen: at most 2.3 eps times that scale). The reverse pass
runs the gemm kernels: the gradients must be those of the gemm path.
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


@pytest.fixture
def calls(monkeypatch):
    """Winograd for every eligible shape; yields the list of the kernel's calls."""
    monkeypatch.setattr(glue, "_WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(glue, "_WINOGRAD_MIN_OUT", 1)
    return _count(monkeypatch)


def _count(monkeypatch):
    seen = []
    kernel = winograd.forward

    def counting(*args):
        seen.append(args[2].shape)
        return kernel(*args)

    monkeypatch.setattr(winograd, "forward", counting)
    return seen


def assert_close(got, want, dtype, w, x, b, cd):
    assert got.shape == want.shape and got.dtype == want.dtype
    err = np.abs(got.astype(np.float64) - want)
    if dtype == np.float64:
        assert err.max() <= 1e-11 * (1 + np.abs(want).max()), f"max error {err.max():.3g}"
        return
    with luxlib.backend("generic"):
        ab = None if b is None else np.abs(b).astype(np.float64)
        scale = conv(activations.identity, np.abs(w).astype(np.float64),
                     np.abs(x).astype(np.float64), ab, cd)
    ratio = (err / (np.finfo(dtype).eps * (1 + scale))).max()
    assert ratio <= 16, f"error {ratio:.3g} eps * scale"


def gradients(act, w, x, b, cd, dy):
    y, pullback = luxlib.vjp(conv, act, w, x, b, cd)
    _, *grads, _ = pullback(dy)  # (weight, x, bias); none for act and cdims
    return y, [g for g in grads if g is not None]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS, ids=repr)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_against_generic(geometry, flip, bias, act, dtype, calls, monkeypatch):
    xs, ws, options = GEOMETRIES[geometry]
    w, x, b = inputs(xs, ws, dtype, bias)
    cd = ConvDims(xs, ws, cross_correlation=not flip, **options)
    before = snapshot(w, x, b)
    y = conv(act, w, x, b, cd)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    y2, grads = gradients(act, w, x, b, cd, dy)
    assert calls == [(xs[0], xs[1]) + xs[2:]] * 2  # forward and the vjp's forward
    assert_unchanged(before, (w, x, b))
    with luxlib.backend("generic"):
        ref = conv(act, w, x, b, cd)
    assert_close(y, ref, dtype, w, x, b, cd)
    np.testing.assert_array_equal(y2, y)
    # the reverse pass is the gemm path's: same gradients (exactly, where the pullback
    # does not read the forward's z / y)
    monkeypatch.setattr(glue, "_WINOGRAD_MIN_CHANNELS", 10**9)
    y3, want = gradients(act, w, x, b, cd, dy)
    assert len(calls) == 2
    for got, ref_g in zip(grads, want):
        if act is activations.identity:
            np.testing.assert_array_equal(got, ref_g)
        else:
            tol = 1e-11 if dtype == np.float64 else 2e-4
            assert np.abs(got - ref_g).max() <= tol * (1 + np.abs(ref_g).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads(dtype, calls):
    xs, ws = (5, 16, 17, 15), (18, 16, 3, 3)
    w, x, b = inputs(xs, ws, dtype)
    cd = ConvDims(xs, ws, padding=1)
    ys = []
    try:
        for n in (1, 2):
            luxlib.set_num_threads(n)
            if luxlib.get_num_threads() == 2:
                assert glue._Plan(w, x, cd).nt == 2
            ys.append(conv(activations.gelu, w, x, b, cd))
    finally:
        luxlib.set_num_threads(None)
    assert len(calls) == 2
    np.testing.assert_array_equal(ys[0], ys[1])  # samples are independent of the threads
    with luxlib.backend("generic"):
        assert_close(ys[0], conv(activations.gelu, w, x, b, cd), dtype, w, x, b, cd)


# default thresholds: (x shape, w shape, options, Winograd expected)
DISPATCH = {
    "taken": ((2, 16, 8, 8), (16, 16, 3, 3), dict(padding=1), True),
    "taken-flip": ((1, 20, 10, 9), (17, 20, 3, 3), dict(cross_correlation=False, padding=(0, 1)), True),
    "few-in-channels": ((2, 15, 8, 8), (16, 15, 3, 3), dict(padding=1), False),
    "few-out-channels": ((2, 16, 8, 8), (15, 16, 3, 3), dict(padding=1), False),
    "small-output": ((2, 16, 9, 9), (16, 16, 3, 3), {}, False),
    "stride": ((2, 16, 17, 17), (16, 16, 3, 3), dict(stride=2), False),
    "dilation": ((2, 16, 12, 12), (16, 16, 3, 3), dict(dilation=2), False),
    "groups": ((2, 32, 10, 10), (32, 16, 3, 3), dict(groups=2), False),
    "kernel-3x2": ((2, 16, 10, 10), (16, 16, 3, 2), {}, False),
    "1d": ((2, 16, 12), (16, 16, 3), {}, False),
    "3d": ((1, 16, 3, 10, 10), (16, 16, 1, 3, 3), {}, False),
}


@pytest.mark.parametrize("case", list(DISPATCH))
def test_dispatch(case, monkeypatch):
    xs, ws, options, expected = DISPATCH[case]
    calls = _count(monkeypatch)
    w, x, b = inputs(xs, ws, np.float64)
    cd = ConvDims(xs, ws, **options)
    y = conv(activations.relu, w, x, b, cd)
    assert len(calls) == int(expected)
    with luxlib.backend("generic"):
        assert_close(y, conv(activations.relu, w, x, b, cd), np.float64, w, x, b, cd)


def test_kernel_checks():
    x = np.zeros((1, 4, 5, 5))
    w = np.zeros((2, 4, 3, 3))
    y = np.zeros((1, 2, 3, 3))
    winograd.forward(0, 0.0, x, w, None, y, y, (0, 0), False, 1)  # fits
    with pytest.raises(ValueError, match="do not fit"):
        winograd.forward(0, 0.0, x, np.zeros((2, 3, 3, 3)), None, y, y, (0, 0), False, 1)
    with pytest.raises(ValueError, match="do not fit"):
        winograd.forward(0, 0.0, x, w, np.zeros(3), y, y, (0, 0), False, 1)
    with pytest.raises(ValueError, match="do not fit"):
        winograd.forward(0, 0.0, x, w, None, y, np.zeros((1, 2, 3, 2)), (0, 0), False, 1)
    with pytest.raises(ValueError, match="activation"):
        winograd.forward(99, 0.0, x, w, None, y, y, (0, 0), False, 1)
