"""fast_activation(_) and bias_activation(_): forward vs NumPy, layouts, dtypes, errors,
gradients, and the memory rule of output-only activations."""

import gc
import re
import sys
import types
import weakref

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
from test_activations import REFERENCE

import luxlib
from luxlib import activations

# act argument -> NumPy reference: identity as None, output-only (relu, sigmoid) and not
# (gelu, mish), bound parameters (leakyrelu a=0.2, softshrink lambda=0.3), a name alias.
ACTS = {
    "none": (None, REFERENCE["identity"]),
    "relu": ("relu", REFERENCE["relu"]),
    "sigmoid": (activations.sigmoid, REFERENCE["sigmoid"]),
    "gelu": ("gelu_tanh", REFERENCE["gelu"]),
    "mish": ("mish", REFERENCE["mish"]),
    "leakyrelu_a0.2": (activations.leakyrelu.with_params(a=0.2), lambda z: REFERENCE["leakyrelu"](z, a=0.2)),
    "softshrink_l0.3": (
        activations.softshrink.with_params(**{"lambda": 0.3}),
        lambda z: REFERENCE["softshrink"](z, 0.3),
    ),
}

# x shapes: 1-D (one sample, bias along its only axis) to 5-D, and empty ones
SHAPES = [(5,), (4, 3), (2, 3, 5), (2, 3, 4, 2), (2, 3, 2, 2, 2), (0, 3), (0, 3, 4), (3, 0), (0,)]
BIAS_OPS = [luxlib.bias_activation, luxlib.bias_activation_]
FAST_OPS = [luxlib.fast_activation, luxlib.fast_activation_]


def channels(shape):
    return shape[0] if len(shape) == 1 else shape[1]


def make(shape, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, shape).astype(dtype)
    b = rng.uniform(-1, 1, channels(shape)).astype(dtype)
    return x, b


def reference(f, x, b):
    """act(x + b) with the bias along axis 1 (axis 0 of 1-D x); the sum is rounded in the
    promoted dtype, as any implementation rounds it, and the activation runs in float64."""
    z = x if b is None else x + (b if x.ndim == 1 else b.reshape((1, -1) + (1,) * (x.ndim - 2)))
    return f(z.astype(np.float64))


def assert_close(y, expected, dtype):
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("op", FAST_OPS, ids=lambda f: f.__name__)
def test_fast_activation_forward(op, act, shape, dtype, backend):
    x, _ = make(shape, dtype)
    before = snapshot(x)
    expected = reference(ACTS[act][1], x, None)
    with backend_ctx(backend):
        y = op(ACTS[act][0], x)
    assert_close(y, expected, dtype)
    if op is luxlib.fast_activation:
        assert_unchanged(before, [x])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("act", list(ACTS))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("op", BIAS_OPS, ids=lambda f: f.__name__)
def test_bias_activation_forward(op, with_bias, act, shape, dtype, backend):
    x, b = make(shape, dtype)
    b = b if with_bias else None
    before = snapshot(x, b)
    expected = reference(ACTS[act][1], x, b)
    with backend_ctx(backend):
        y = op(ACTS[act][0], x, b)
    assert_close(y, expected, dtype)
    assert_unchanged(before[1:], [b])
    if op is luxlib.bias_activation:
        assert_unchanged(before, [x])


def test_bias_runs_along_axis_1():
    x = np.zeros((2, 3, 4))
    y = luxlib.bias_activation(None, x, np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(y, np.broadcast_to(np.array([1.0, 2.0, 3.0])[None, :, None], (2, 3, 4)))
    y1 = luxlib.bias_activation(None, np.zeros(3), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(y1, [1.0, 2.0, 3.0])


def test_scalar_and_array_like_input():
    np.testing.assert_array_equal(luxlib.fast_activation("relu", np.float64(-2.0)), 0.0)
    y = luxlib.bias_activation("relu", [[-1, 2], [3, -4]], [1, 1])  # integer lists become float64
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [[0.0, 3.0], [4.0, 0.0]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("x_dtype", "b_dtype"),
    [(np.float32, np.float64), (np.float64, np.float32), (np.float16, np.float32), (np.float16, np.float64)],
    ids=str,
)
@pytest.mark.parametrize("op", BIAS_OPS, ids=lambda f: f.__name__)
def test_mixed_dtypes_promote(op, x_dtype, b_dtype, backend):
    x, b = make((3, 4, 2))
    x, b = x.astype(x_dtype), b.astype(b_dtype)
    out_dtype = np.result_type(x_dtype, b_dtype).type
    expected = reference(REFERENCE["gelu"], x.astype(out_dtype), b.astype(out_dtype))
    with backend_ctx(backend):
        y = op("gelu", x, b)
    assert_close(y, expected, out_dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", BIAS_OPS + FAST_OPS, ids=lambda f: f.__name__)
def test_layouts(op, layout, dtype, backend):
    x0, b0 = make((3, 4, 5), dtype)
    x, b = with_layout(x0, layout), with_layout(b0, layout)
    before = snapshot(x, b)
    act = "softplus"
    with_bias = op in BIAS_OPS
    expected = reference(REFERENCE[act], x0, b0 if with_bias else None)
    with backend_ctx(backend):
        y = op(act, x, b) if with_bias else op(act, x)
    assert_close(y, expected, dtype)
    assert_unchanged(before[1:], [b])
    if not op.__name__.endswith("_") or layout == "readonly":
        assert_unchanged(before, [x, b])


@pytest.mark.parametrize("op", FAST_OPS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", [np.arange(3), np.array([True, False]), np.ones(2, complex), np.array([None, 1.0])])
def test_fast_activation_rejects_non_float(op, bad):
    with pytest.raises(TypeError, match=rf"{op.__name__}: x must have a floating dtype"):
        op("relu", bad)


@pytest.mark.parametrize("op", BIAS_OPS, ids=lambda f: f.__name__)
def test_bias_activation_errors(op):
    name = op.__name__
    x, b = make((2, 3, 4))
    for bad in (np.arange(24).reshape(2, 3, 4), np.ones((2, 3), complex), np.zeros((2, 3), bool)):
        with pytest.raises(TypeError, match=rf"{name}: x must have a floating dtype"):
            op("relu", bad, None)
    for bad in (np.arange(3), np.ones(3, complex)):
        with pytest.raises(TypeError, match=rf"{name}: bias must have a floating dtype"):
            op("relu", x, bad)
    with pytest.raises(ValueError, match=rf"{name}: bias must have shape \(3,\).*\(2, 3, 4\).*got \(4,\)"):
        op("relu", x, np.ones(4))
    with pytest.raises(ValueError, match=rf"{name}: bias must have shape \(5,\).*\(5,\).*got \(3,\)"):
        op("relu", np.ones(5), b)  # 1-D x: the bias runs along its only axis
    for bad in (b.reshape(1, 3), b.reshape(3, 1), np.float64(1.0)):
        shapes = rf"\(3,\).*\(2, 3, 4\).*got {re.escape(str(bad.shape))}"
        with pytest.raises(ValueError, match=rf"{name}: bias must have shape {shapes}"):
            op("relu", x, bad)
    with pytest.raises(ValueError, match=rf"{name}: x must have at least 1 dimension"):
        op("relu", np.float64(1.0), b)
    with pytest.raises(ValueError, match="unknown activation 'rellu'"):
        op("rellu", x, b)
    with pytest.raises(TypeError, match="act must be"):
        op(1, x, b)


def test_errors_come_before_any_kernel():
    with luxlib._dispatch.trace() as record:
        with pytest.raises(ValueError):
            luxlib.bias_activation("relu", np.ones((2, 3)), np.ones(2))
    assert record == []


# --- reverse mode -------------------------------------------------------------------

GRAD_ACTS = ["none", "relu", "sigmoid", "gelu", "mish", "leakyrelu_a0.2", "softshrink_l0.3"]
GRAD_SHAPES = [(5,), (4, 3), (2, 3, 2, 2)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", GRAD_SHAPES, ids=str)
@pytest.mark.parametrize("act", GRAD_ACTS)
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_bias_activation_gradients(with_bias, act, shape, backend):
    x, b = make(shape, seed=1)
    with backend_ctx(backend):
        if with_bias:
            check_gradients(luxlib.bias_activation, (ACTS[act][0], x, b), expect=[1, 2])
        else:
            check_gradients(luxlib.bias_activation, (ACTS[act][0], x, None), expect=[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("act", GRAD_ACTS)
def test_fast_activation_gradients(act, shape, backend):
    x, _ = make(shape, seed=2)
    with backend_ctx(backend):
        check_gradients(luxlib.fast_activation, (ACTS[act][0], x), expect=[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["C", "F", "readonly"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_inplace_variants_have_the_same_gradients(act, layout, backend):
    x, b = make((3, 4, 2), seed=3)
    dy = np.random.default_rng(4).standard_normal(x.shape)
    with backend_ctx(backend):
        for op, op_ in (BIAS_OPS, FAST_OPS):
            args = (x, b) if op is luxlib.bias_activation else (x,)
            y, pullback = luxlib.vjp(op, act, *args)
            y_, pullback_ = luxlib.vjp(op_, act, *(with_layout(a.copy(), layout) for a in args))
            np.testing.assert_allclose(y_, y, rtol=1e-14)
            for g_, g in zip(pullback_(dy), pullback(dy)):
                assert (g_ is None) == (g is None)
                if g is not None:
                    np.testing.assert_allclose(g_, g, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_under_mixed_precision(backend):
    x, b = make((4, 3), seed=5)
    x32 = x.astype(np.float32)
    dy = np.random.default_rng(6).standard_normal((4, 3))
    with backend_ctx(backend):
        y, pullback = luxlib.vjp(luxlib.bias_activation, "gelu", x32, b)
        _, dx, db = pullback(dy)
        _, pullback64 = luxlib.vjp(luxlib.bias_activation, "gelu", x32.astype(np.float64), b)
        _, dx64, db64 = pullback64(dy)
    assert y.dtype == np.float64 and dx.dtype == np.float32 and db.dtype == np.float64
    np.testing.assert_allclose(dx, dx64, rtol=1e-6)
    np.testing.assert_array_equal(db, db64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_empty_batch_gradients(dtype, backend):
    x, b = make((0, 3, 2), dtype)
    with backend_ctx(backend):
        y, pullback = luxlib.vjp(luxlib.bias_activation, "gelu", x, b)
        _, dx, db = pullback(np.ones_like(y))
    assert y.shape == dx.shape == (0, 3, 2) and dx.dtype == db.dtype == dtype
    np.testing.assert_array_equal(db, np.zeros(3))


def _reachable_arrays(root):
    """Arrays reachable from ``root`` through closures, containers and objects, without
    entering modules' globals (a function reaches its module's namespace that way)."""
    module_dicts = {id(vars(m)) for m in list(sys.modules.values()) if hasattr(m, "__dict__")}
    skip = (type, types.ModuleType, types.CodeType, str, bytes, int, float)
    seen, stack, found = set(), [root], []
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in module_dicts or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            found.append(obj)
            if obj.base is not None:
                stack.append(obj.base)
        else:
            stack.extend(gc.get_referents(obj))
    return found


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", [luxlib.fast_activation, luxlib.bias_activation], ids=lambda f: f.__name__)
@pytest.mark.parametrize("act", ["relu", "sigmoid", "leakyrelu_a0.2", "gelu", "mish"])
def test_vjp_of_output_only_activation_keeps_only_y(act, op, backend):
    """The pullback of an output-only activation keeps y and nothing else; the others
    keep the pre-activation or the inputs it is made of (the control that shows the
    check can see them)."""
    x, b = make((16, 8), seed=7)
    args = (x, b) if op is luxlib.bias_activation else (x,)
    inputs = [x + b] + [a.copy() for a in args]  # pre-activation, x and b, by value
    dy = np.random.default_rng(8).standard_normal(x.shape)
    expected = luxlib.vjp(op, ACTS[act][0], *args)[1](dy)
    refs = [weakref.ref(a) for a in args]
    with backend_ctx(backend):
        y, pullback = luxlib.vjp(op, ACTS[act][0], *args)
    del x, b, args
    gc.collect()
    kept = _reachable_arrays(pullback)
    holds_input = any(k.shape == i.shape and np.array_equal(k, i) for k in kept for i in inputs)
    if activations.get(ACTS[act][0]).output_only:
        assert all(r() is None for r in refs), "the pullback keeps an input alive"
        assert not holds_input, "the pullback keeps the pre-activation or a copy of an input"
        owned = {id(k): k.nbytes for k in kept if k.base is None}
        assert sum(owned.values()) <= y.nbytes, "the pullback keeps more than y"
    else:
        assert holds_input, "control: a non-output-only pullback must keep what it differentiates"
    for g, e in zip(pullback(dy)[1:], expected[1:]):  # entry 0 (act) is None
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("op", [luxlib.fast_activation, luxlib.bias_activation], ids=lambda f: f.__name__)
def test_identity_results_do_not_alias_arguments(op, dtype, backend):
    """y is a new array, not x (the identity without bias), and dx is not dy: writing to a
    result leaves the caller's arrays alone, on every path."""
    x = make((3, 4), dtype)[0]
    args = (None, x, None) if op is luxlib.bias_activation else (None, x)
    dy = np.ones_like(x)
    with backend_ctx(backend):
        y = op(*args)
        yv, pullback = luxlib.vjp(op, *args)
        dx = pullback(dy)[1]
    assert not np.shares_memory(y, x) and not np.shares_memory(yv, x)
    assert not np.shares_memory(dx, dy)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)
