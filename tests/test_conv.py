"""ConvDims and fused_conv_bias_activation: forward vs a direct-loop NumPy convolution,
gradients, layouts, empty batches, errors, property tests."""

import gc
import itertools
import math
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
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import luxlib
from luxlib import ConvDims, activations, fused_conv_bias_activation as conv

# activations with independent formulas, from tests/_helpers.py
ACTS = {name: REFERENCE_ACTS[name] for name in ("identity", "relu", "tanh", "gelu", "leakyrelu_a0.2", "softplus")}


def ref_padding(padding, in_size, kernel, dilation, stride=None):
    """The (lo, hi) pairs a padding argument means, written out independently."""
    nd = len(in_size)
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":  # ONNX SAME_UPPER: out = ceil(n / s), least total padding, extra at the end
        stride = stride or (1,) * nd
        pads = []
        for n, k, d, s in zip(in_size, kernel, dilation, stride):
            out = -(-n // s)
            total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
            pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [tuple(p) if isinstance(p, tuple) else (p, p) for p in padding]


def per_axis(v, nd):
    return tuple(v) if isinstance(v, tuple) else (v,) * nd


def reference(f, w, x, b, stride=1, padding=0, dilation=1, groups=1, cross_correlation=True):
    """``f(conv(x, w) + b)`` in float64: a loop over output positions and groups, each
    output the sum over the window x[positions p*stride + t*dilation] of x * w."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    kernel = w.shape[2:]
    stride, dilation = per_axis(stride, nd), per_axis(dilation, nd)
    pads = ref_padding(padding, x.shape[2:], kernel, dilation, stride)
    if not cross_correlation:
        w = w[(Ellipsis,) + (slice(None, None, -1),) * nd]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(pads))
    out = [(n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(xp.shape[2:], kernel, stride, dilation)]
    c_out, cg = w.shape[0], w.shape[1]
    cog = c_out // groups
    y = np.zeros((x.shape[0], c_out, *out))
    for pos in itertools.product(*map(range, out)):
        window = tuple(slice(p * s, p * s + d * (k - 1) + 1, d) for p, s, d, k in zip(pos, stride, dilation, kernel))
        for g in range(groups):
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + window]  # (N, Cg, *k)
            wg = w[g * cog : (g + 1) * cog]  # (Cog, Cg, *k)
            y[(slice(None), slice(g * cog, (g + 1) * cog)) + pos] = np.tensordot(
                patch, wg, axes=(list(range(1, nd + 2)), list(range(1, nd + 2)))
            )
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, -1) + (1,) * nd)
    return f(y)


# (x shape, w shape, ConvDims options): 1-D/2-D/3-D, stride, dilation, every padding form,
# groups incl. depthwise (with a channel multiplier too), flipped kernels
CASES = [
    ((2, 3, 7), (4, 3, 3), {}),
    ((2, 2, 9), (3, 2, 3), dict(stride=2, padding=1, dilation=2)),
    ((1, 2, 6), (2, 2, 2), dict(padding=((2, 0),), cross_correlation=False)),
    ((2, 2, 6), (4, 1, 3), dict(groups=2, padding="same")),
    ((2, 4, 6, 5), (6, 2, 3, 2), dict(stride=(2, 1), padding=((1, 0), 2), dilation=(1, 2), groups=2,
                                      cross_correlation=False)),
    ((1, 3, 5, 5), (3, 1, 3, 3), dict(groups=3, padding="same")),
    ((2, 2, 7, 6), (2, 2, 2, 3), dict(stride=2, padding="same", dilation=(2, 1))),
    ((1, 2, 5, 4), (3, 2, 2, 2), dict(padding="valid", cross_correlation=False)),
    ((1, 2, 4, 5, 3), (4, 1, 2, 3, 2), dict(groups=2, padding=(1, 0, (0, 1)), stride=(1, 2, 1))),
    ((1, 1, 4, 4, 4), (2, 1, 2, 2, 2), dict(padding="same", dilation=2, cross_correlation=False)),
]
CASE_IDS = [f"{len(xs) - 2}d-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'plain'}" for xs, _, kw in CASES]


def make(x_shape, w_shape, dtype=np.float64, bias=True, seed=0, quantized=True):
    """Random inputs; ``quantized`` values are multiples of 1/4, so that the convolution
    is exact in every dtype and only the activation rounds."""
    rng = np.random.default_rng(seed)
    draw = (lambda s: rng.integers(-4, 5, s) / 4) if quantized else rng.standard_normal
    w, x = draw(w_shape).astype(dtype), draw(x_shape).astype(dtype)
    b = draw(w_shape[0]).astype(dtype) if bias else None
    return w, x, b


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_forward(backend, dtype, case, with_bias):
    x_shape, w_shape, kw = case
    w, x, b = make(x_shape, w_shape, dtype, with_bias)
    before = snapshot(w, x, b)
    cd = ConvDims(x_shape, w_shape, **kw)
    with backend_ctx(backend):
        y = conv("gelu", w, x, b, cd)
    expected = reference(ACTS["gelu"][1], w, x, b, **kw)
    assert y.shape == cd.output_shape == expected.shape
    assert y.dtype == dtype
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=RTOL[dtype], atol=ATOL[dtype])
    assert_unchanged(before, (w, x, b))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("act", list(ACTS))
def test_activations(dtype, act):
    x_shape, w_shape, kw = CASES[4]
    w, x, b = make(x_shape, w_shape, dtype)
    y = conv(ACTS[act][0], w, x, b, ConvDims(x_shape, w_shape, **kw))
    np.testing.assert_allclose(
        y.astype(np.float64), reference(ACTS[act][1], w, x, b, **kw), rtol=RTOL[dtype], atol=ATOL[dtype]
    )


def test_default_cdims_is_plain_cross_correlation():
    w, x, b = make((2, 3, 5, 4), (2, 3, 2, 3))
    np.testing.assert_allclose(conv("relu", w, x, b), reference(ACTS["relu"][1], w, x, b), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(conv("relu", w, x, b), conv("relu", w, x, b, None))


def test_generic_implementation_runs():
    w, x, b = make((1, 2, 5), (2, 2, 3))
    with luxlib.backend("generic"), luxlib._dispatch.trace() as record:
        conv("relu", w, x, b)
    assert record == [("fused_conv_bias_activation", "generic")]


def test_flip_is_true_convolution():
    """cross_correlation=False equals cross-correlating with the flipped kernel."""
    w, x, b = make((2, 2, 6, 5), (3, 2, 3, 2), quantized=False)
    cd = ConvDims(x.shape, w.shape, padding=1, cross_correlation=False)
    flipped = conv(None, w[:, :, ::-1, ::-1], x, b, ConvDims(x.shape, w.shape, padding=1))
    np.testing.assert_allclose(conv(None, w, x, b, cd), flipped, rtol=1e-12, atol=1e-12)
    assert cd.flipkernel and not cd.cross_correlation


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arg, layout", [(a, lay) for a in ("weight", "x", "bias") for lay in LAYOUTS])
def test_layouts(backend, dtype, arg, layout):
    x_shape, w_shape, kw = CASES[4]
    w, x, b = make(x_shape, w_shape, dtype)
    args = {"weight": w, "x": x, "bias": b}
    args[arg] = with_layout(args[arg], layout)
    before = snapshot(*args.values())
    with backend_ctx(backend):
        y = conv("tanh", **args, cdims=ConvDims(x_shape, w_shape, **kw))
    np.testing.assert_allclose(y, reference(np.tanh, w, x, b, **kw), rtol=RTOL[dtype], atol=ATOL[dtype])
    assert_unchanged(before, args.values())


@pytest.mark.parametrize("arg", ["weight", "x"])
@pytest.mark.parametrize("layout", ["F", "negstride"])
def test_gradient_layouts(arg, layout):
    x_shape, w_shape, kw = CASES[4]
    w, x, b = make(x_shape, w_shape, quantized=False)
    cd = ConvDims(x_shape, w_shape, **kw)
    _, pullback = luxlib.vjp(conv, "gelu", w, x, b, cd)
    dy = np.random.default_rng(1).standard_normal(cd.output_shape)
    args = {"weight": w, "x": x}
    args[arg] = with_layout(args[arg], layout)
    _, pb_layout = luxlib.vjp(conv, "gelu", args["weight"], args["x"], b, cd)
    for g, g_layout in zip(pullback(dy)[1:4], pb_layout(dy)[1:4]):
        np.testing.assert_allclose(g_layout, g, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["identity", "relu", "gelu", "leakyrelu_a0.2", "softplus"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("with_bias", [True, False])
def test_gradients(act, case, with_bias):
    x_shape, w_shape, kw = case
    w, x, b = make(x_shape, w_shape, bias=with_bias, seed=1, quantized=False)
    before = snapshot(w, x, b)
    args = (ACTS[act][0], w, x, b, ConvDims(x_shape, w_shape, **kw))
    check_gradients(conv, args, expect=[1, 2, 3] if with_bias else [1, 2])
    assert_unchanged(before, (w, x, b))


def test_pullback_matches_formulas():
    """1-D, one channel, stride 1: dx is the full correlation of g with the flipped kernel,
    dw the correlation of x with g, db the sum of g, with g = dy * act'(z)."""
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((1, 1, 8)), rng.standard_normal((1, 1, 3)), rng.standard_normal(1)
    y, pullback = luxlib.vjp(conv, "softplus", w, x, b)
    dy = rng.standard_normal(y.shape)
    z = np.correlate(x[0, 0], w[0, 0], "valid") + b
    g = dy[0, 0] / (1 + np.exp(-z))
    _, dw, dx, db, _ = pullback(dy) + (None,)
    np.testing.assert_allclose(dx[0, 0], np.convolve(g, w[0, 0], "full"), rtol=1e-12)
    np.testing.assert_allclose(dw[0, 0], np.correlate(x[0, 0], g, "valid"), rtol=1e-12)
    np.testing.assert_allclose(db, [g.sum()], rtol=1e-12)


def test_vjp_does_not_keep_bias():
    """The pullback needs x and weight (and the activation's output), never the bias."""
    from luxlib._generic.conv import conv_vjp

    w, x, b = make((1, 2, 5), (2, 2, 3))
    ref = weakref.ref(b)
    _, pullback = conv_vjp(activations.get("relu"), w, x, b, ConvDims(x.shape, w.shape))
    del b
    gc.collect()
    assert ref() is None
    assert pullback(np.ones((1, 2, 3)))["bias"].shape == (2,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[8]], ids=[CASE_IDS[1], CASE_IDS[4], CASE_IDS[8]])
def test_empty_batch(backend, with_bias, case):
    x_shape, w_shape, kw = case
    x_shape = (0,) + x_shape[1:]
    w, x, b = make(x_shape, w_shape, bias=with_bias)
    cd = ConvDims(x_shape, w_shape, **kw)
    with backend_ctx(backend):
        y, pullback = luxlib.vjp(conv, "gelu", w, x, b, cd)
    assert y.shape == cd.output_shape and y.shape[:2] == (0, w_shape[0])
    _, dw, dx, db, _ = pullback(np.zeros(y.shape))
    assert dx.shape == x_shape
    np.testing.assert_array_equal(dw, np.zeros(w_shape))
    if with_bias:
        np.testing.assert_array_equal(db, np.zeros(w_shape[0]))


def test_cdims_applies_to_any_batch_size():
    w, x, b = make((5, 2, 6), (3, 2, 3))
    cd = ConvDims((64, 2, 6), (3, 2, 3), padding=1)
    y = conv("relu", w, x, b, cd)
    assert y.shape == (5, 3, 6)
    np.testing.assert_allclose(y, reference(ACTS["relu"][1], w, x, b, padding=1), rtol=1e-12, atol=1e-12)


def test_zero_channels():
    """C_out = 0 gives an empty output; C_in = 0 an output of just the (activated) bias."""
    y = conv(None, np.zeros((0, 2, 3)), np.ones((2, 2, 5)), None)
    assert y.shape == (2, 0, 3)
    y, pullback = luxlib.vjp(conv, "relu", np.zeros((2, 0, 3)), np.ones((2, 0, 5)), np.array([1.0, -1.0]))
    np.testing.assert_array_equal(y, np.broadcast_to([[[1.0], [0.0]]], (2, 2, 3)))
    _, dw, dx, db = pullback(np.ones(y.shape))
    assert dw.shape == (2, 0, 3) and dx.shape == (2, 0, 5)
    np.testing.assert_array_equal(db, [6.0, 0.0])


def test_nan_inf_propagate():
    w, x, b = make((1, 1, 6), (1, 1, 2))
    x[0, 0, 2] = np.nan
    x[0, 0, 5] = np.inf
    y = conv(None, np.abs(w) + 1, x, b)  # positive taps: inf stays +inf
    assert np.isnan(y[0, 0, [1, 2]]).all() and np.isfinite(y[0, 0, [0, 3]]).all() and y[0, 0, 4] == np.inf


@pytest.mark.parametrize(
    "dtypes",
    [(np.float32, np.float64, np.float32), (np.float16, np.float32, None), (np.float64, np.float16, np.float16)],
    ids=str,
)
def test_mixed_dtypes_promote(dtypes):
    w, x, b = make((2, 2, 5, 4), (3, 2, 2, 2))
    args = [None if d is None else a.astype(d) for a, d in zip((w, x, b), dtypes)]
    out_dtype = np.result_type(*[d for d in dtypes if d is not None])
    y, pullback = luxlib.vjp(conv, "tanh", *args, ConvDims(x.shape, w.shape, padding=1))
    assert y.dtype == out_dtype
    np.testing.assert_allclose(y, reference(np.tanh, *args, padding=1), rtol=2e-3, atol=2e-3)
    grads = pullback(np.ones_like(y))
    assert grads[0] is None and grads[4] is None
    for g, a in zip(grads[1:4], args):
        assert (g is None) if a is None else (g.shape == a.shape and g.dtype == a.dtype)


def test_float16_accumulates_in_float32():
    """1024 + 0.5 - 1024 is 0 when every tap rounds to float16, 0.5 in float32."""
    x = np.array([[[1024.0, 0.5, -1024.0]]], np.float16)
    y = conv(None, np.ones((1, 1, 3), np.float16), x, None)
    assert y.dtype == np.float16 and y[0, 0, 0] == 0.5


def test_unregistered_callable():
    w, x, b = make((1, 2, 5), (2, 2, 3))
    np.testing.assert_allclose(conv(np.sin, w, x, b), reference(np.sin, w, x, b), rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="no derivative"):
        luxlib.vjp(conv, np.sin, w, x, b)


# --- ConvDims ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 5, 6, 7, 11])
@pytest.mark.parametrize("k, s, d", [(1, 1, 1), (2, 1, 1), (3, 2, 1), (4, 3, 1), (3, 1, 2), (2, 2, 3)])
def test_same_padding(n, k, s, d):
    cd = ConvDims((1, 1, n, n), (1, 1, k, 1), stride=s, padding="same", dilation=(d, 1))
    assert cd.output_shape[2:] == (math.ceil(n / s), math.ceil(n / s))
    total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)  # ONNX SAME_UPPER
    assert cd.padding == ((total // 2, total - total // 2), (0, 0))
    if s == 1:  # NNlib's SamePad total
        assert total == d * (k - 1)


def test_convdims_normalizes():
    cd = ConvDims((2, 6, 9, 8, 7), (4, 3, 3, 2, 1), stride=(1, 2, 3), padding=(1, (2, 0), 0), dilation=2, groups=2)
    assert cd.stride == (1, 2, 3) and cd.dilation == (2, 2, 2) and cd.groups == 2
    assert cd.padding == ((1, 1), (2, 0), (0, 0))
    assert cd.spatial_dims == 3 and cd.kernel_size == (3, 2, 1) and cd.cross_correlation and not cd.flipkernel
    assert cd.output_shape == (2, 4, 7, 4, 3)
    assert ConvDims((1, 2, 5), (1, 2, 3), padding=[(1, 2)]).padding == ((1, 2),)
    assert ConvDims((1, 2, 5), (1, 2, 3), stride=np.int64(2)).stride == (2,)
    assert cd == ConvDims((2, 6, 9, 8, 7), (4, 3, 3, 2, 1), (1, 2, 3), ((1, 1), (2, 0), (0, 0)), (2, 2, 2), 2)
    assert "ConvDims(" in repr(cd)


@pytest.mark.parametrize(
    "x_shape, w_shape, kw, match",
    [
        ((2, 3), (4, 3), {}, "1, 2 or 3 spatial axes"),
        ((1, 1, 2, 2, 2, 2), (1, 1, 1, 1, 1, 1), {}, "1, 2 or 3 spatial axes"),
        ((2, 3, 5), (4, 3, 2, 2), {}, "same rank"),
        ((2, 3, 5), (4, 2, 3), {}, r"C_in = 3 must equal w_shape\[1\] \* groups"),
        ((2, 4, 5), (4, 1, 3), dict(groups=2), r"C_in = 4 must equal w_shape\[1\] \* groups = 1 \* 2"),
        ((2, 4, 5), (3, 2, 3), dict(groups=2), "divisible by groups"),
        ((2, 3, 5), (4, 3, 3), dict(groups=0), "groups must be positive"),
        ((2, 3, 2), (4, 3, 3), {}, "output size"),
        ((2, 3, 5), (4, 3, 3), dict(dilation=3), "output size"),
        ((2, 3, 0), (4, 3, 1), dict(padding="same"), "output size"),
        ((2, 3, 5), (4, 3, 3), dict(padding=-1), "non-negative"),
        ((2, 3, 5), (4, 3, 3), dict(padding=((0, -1),)), "non-negative"),
        ((2, 3, 5), (4, 3, 3), dict(padding="full"), "'valid' or 'same'"),
        ((2, 3, 5), (4, 3, 3), dict(padding=(1, 1)), "one entry"),
        ((2, 3, 5), (4, 3, 3), dict(padding=((1, 1, 1),)), r"\(lo, hi\)"),
        ((2, 3, 5), (4, 3, 3), dict(stride=0), "stride must be positive"),
        ((2, 3, 5, 5), (4, 3, 3, 3), dict(stride=(1, -1)), "stride must be positive"),
        ((2, 3, 5, 5), (4, 3, 3, 3), dict(stride=(1, 1, 1)), "stride must be an int or 2 ints"),
        ((2, 3, 5), (4, 3, 3), dict(dilation=0), "dilation must be positive"),
        ((2, 3, 5), (4, 3, 0), {}, "kernel size"),
    ],
)
def test_convdims_errors(x_shape, w_shape, kw, match):
    with pytest.raises(ValueError, match=match) as info:
        ConvDims(x_shape, w_shape, **kw)
    assert str(info.value).startswith("ConvDims:")


@pytest.mark.parametrize(
    "kw", [dict(stride=1.5), dict(padding=1.0), dict(groups=True), dict(cross_correlation=1), dict(dilation="2")]
)
def test_convdims_type_errors(kw):
    with pytest.raises(TypeError, match="ConvDims"):
        ConvDims((1, 2, 5), (1, 2, 3), **kw)


# --- fused_conv_bias_activation errors -----------------------------------------------------


def test_errors():
    w, x, b = make((2, 3, 6), (4, 3, 3))
    cd = ConvDims(x.shape, w.shape)
    with pytest.raises(ValueError, match=r"fused_conv_bias_activation: cdims was built for x_shape \(2, 3, 6\) "
                                         r"and w_shape \(4, 3, 3\).*x of shape \(2, 3, 7\)"):
        conv(None, w, np.zeros((2, 3, 7)), b, cd)
    with pytest.raises(ValueError, match=r"cdims.*weight of shape \(4, 3, 2\)"):
        conv(None, w[..., :2], x, b, cd)
    with pytest.raises(ValueError, match=r"fused_conv_bias_activation: bias must have shape \(4,\).*got \(3,\)"):
        conv(None, w, x, b[:3], cd)
    with pytest.raises(ValueError, match="fused_conv_bias_activation: bias must have 1 dimensions"):
        conv(None, w, x, b[None], cd)
    with pytest.raises(ValueError, match=r"fused_conv_bias_activation: ConvDims: .*C_in = 2"):
        conv(None, w, x[:, :2], b)
    with pytest.raises(ValueError, match=r"fused_conv_bias_activation: ConvDims: .*spatial axes"):
        conv(None, w[:, :, 0], x[:, :, 0], b)
    with pytest.raises(TypeError, match="fused_conv_bias_activation: cdims must be a ConvDims"):
        conv(None, w, x, b, (1, 1))
    with pytest.raises(TypeError, match="fused_conv_bias_activation: x must have a floating dtype"):
        conv(None, w, x.astype(np.int32), b)
    with pytest.raises(TypeError, match="fused_conv_bias_activation: weight must have a floating dtype"):
        conv(None, w.astype(np.complex128), x, b)
    with pytest.raises(TypeError, match="fused_conv_bias_activation: bias must have a floating dtype"):
        conv(None, w, x, b.astype(bool))
    with pytest.raises(ValueError, match="unknown activation"):
        conv("nope", w, x, b)


# --- property tests ----------------------------------------------------------------------


@st.composite
def conv_problems(draw):
    nd = draw(st.integers(1, 3))
    groups, cg, cog = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    n = draw(st.integers(0, 2))
    size = st.integers(1, 5 if nd < 3 else 3)
    in_size = tuple(draw(size) for _ in range(nd))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nd))
    padding = draw(
        st.one_of(
            st.sampled_from(["valid", "same"]),
            st.integers(0, 2),
            st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2)) for _ in range(nd)]),
        )
    )
    pads = ref_padding(padding, in_size, kernel, dilation, stride)
    assume(all(i + lo + hi >= d * (k - 1) + 1 for i, (lo, hi), k, d in zip(in_size, pads, kernel, dilation)))
    x_shape, w_shape = (n, groups * cg) + in_size, (groups * cog, cg) + kernel
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
              cross_correlation=draw(st.booleans()))
    return x_shape, w_shape, kw, draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=40, deadline=None)
@given(conv_problems())
def test_property_forward_and_adjoint(problem):
    """Forward equals the direct loop; and, conv being bilinear, the pullback is its exact
    adjoint: <dy, conv(x, w)> = <dx, x> = <dw, w> (and <dy, 1> = sum(db))."""
    x_shape, w_shape, kw, with_bias, seed = problem
    w, x, b = make(x_shape, w_shape, bias=with_bias, seed=seed, quantized=False)
    cd = ConvDims(x_shape, w_shape, **kw)
    y, pullback = luxlib.vjp(conv, None, w, x, None, cd)
    np.testing.assert_allclose(y, reference(lambda z: z, w, x, None, **kw), rtol=1e-12, atol=1e-12)
    dy = np.random.default_rng(seed).standard_normal(y.shape)
    _, dw, dx, _, _ = pullback(dy)
    inner = np.sum(dy * y)
    np.testing.assert_allclose([np.sum(dx * x), np.sum(dw * w)], [inner, inner], rtol=1e-10, atol=1e-10)
    if with_bias:
        yb, pb = luxlib.vjp(conv, None, w, x, b, cd)
        np.testing.assert_allclose(yb, y + b.reshape((1, -1) + (1,) * cd.spatial_dims), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(pb(dy)[3], dy.sum(axis=(0,) + tuple(range(2, dy.ndim))), rtol=1e-12, atol=1e-12)
