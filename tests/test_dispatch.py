"""Operation modes, backend selection, the vjp machinery, import hygiene and threads."""

import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_activations import REFERENCE

import luxlib
from luxlib import GenericBroadcastOp, GPUBroadcastOp, LoopedArrayOp, _dispatch, activations

ROOT = Path(__file__).resolve().parents[1]


class DuckArray:
    """A foreign array type: has dtype, shape and an array namespace, is not an ndarray."""

    def __init__(self, data):
        self.data = np.asarray(data)
        self.dtype, self.shape = self.data.dtype, self.data.shape

    def __array_namespace__(self, api_version=None):
        return np


class SubArray(np.ndarray):
    pass


def fake_cupy_array(device):
    """An object whose type lives in the ``cupy`` package, without importing CuPy."""
    cls = type("ndarray", (), {"__module__": "cupy._core.core"})
    arr = cls()
    arr.device = type("Device", (), {"id": device})()
    arr.dtype, arr.shape = np.dtype(np.float32), (2,)
    return arr


def default_kind(op, x):
    """The kind ``run`` picks without an override: looped where a kernel is registered."""
    mode = luxlib.internal_operation_mode(x).kind
    return mode if (op, mode) in _dispatch._REGISTRY else "generic"


x16, x32, x64 = (np.ones((2, 3), dt) for dt in (np.float16, np.float32, np.float64))


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        (x32, LoopedArrayOp()),
        (x64, LoopedArrayOp()),
        ((x32, None, x64), LoopedArrayOp()),
        ([x64, None], LoopedArrayOp()),
        (x16, GenericBroadcastOp()),
        ((x16, None), GenericBroadcastOp()),
        ((x32, x16), GenericBroadcastOp()),
        (np.ones(3, np.complex64), GenericBroadcastOp()),
        (np.ones(3, np.complex128), GenericBroadcastOp()),
        ((), GenericBroadcastOp()),
        ((None, None), GenericBroadcastOp()),
        (np.ma.masked_array(np.ones(3), mask=[0, 1, 0]), GenericBroadcastOp()),
        (np.ones(3).view(SubArray), GenericBroadcastOp()),
        (DuckArray(np.ones(3)), GenericBroadcastOp()),
        ((x64, DuckArray(np.ones(3))), GenericBroadcastOp()),
        (np.float64(1.0), GenericBroadcastOp()),
        (fake_cupy_array(1), GPUBroadcastOp(1)),
        ((fake_cupy_array(0), None), GPUBroadcastOp(0)),
        ((fake_cupy_array(0), x32), GenericBroadcastOp()),
    ],
    ids=[
        "f32", "f64", "tuple-f32-None-f64", "list", "f16", "f16-None", "f32-f16", "c64", "c128",
        "empty", "all-None", "masked", "subclass", "duck", "f64-duck", "numpy-scalar", "cupy",
        "cupy-None", "cupy-numpy",
    ],
)  # fmt: skip
def test_internal_operation_mode(arrays, expected):
    mode = luxlib.internal_operation_mode(arrays)
    assert mode == expected and type(mode) is type(expected)
    assert isinstance(mode, luxlib.AbstractInternalArrayOpMode)


def test_modes_compare_by_value():
    assert GPUBroadcastOp(1) == GPUBroadcastOp(1) != GPUBroadcastOp(0)
    assert LoopedArrayOp() != GenericBroadcastOp()
    assert len({LoopedArrayOp(), LoopedArrayOp(), GPUBroadcastOp(2), GPUBroadcastOp(2)}) == 2
    assert repr(GPUBroadcastOp(2)) == "GPUBroadcastOp(2)" and repr(LoopedArrayOp()) == "LoopedArrayOp()"


@pytest.mark.parametrize(
    "x",
    [np.ma.masked_array([-1.0, 2.0, -3.0], mask=[0, 0, 1]), np.array([-1.0, 2.0, -3.0]).view(SubArray)],
    ids=["masked", "subclass"],
)
def test_foreign_numpy_types_run_generic(x):
    with _dispatch.trace() as record:
        y = luxlib.bias_activation("relu", x, np.array([0.5, 0.5, 0.5]))
    assert record == [("bias_activation", "generic")]
    np.testing.assert_array_equal(np.asarray(y), [0.0, 2.5, 0.0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_trace_and_generic_override(dtype):
    x = np.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3)
    with _dispatch.trace() as record:
        luxlib.fast_activation("relu", x)
        with luxlib.backend("generic"):
            y = luxlib.bias_activation("relu", x, np.zeros(3, dtype))
    assert record == [("fast_activation", default_kind("fast_activation", x)), ("bias_activation", "generic")]
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    if dtype == np.float16:
        assert record[0] == ("fast_activation", "generic")


def test_backend_is_restored_and_nests():
    x = np.ones(3)
    with luxlib.backend("gpu"):
        with luxlib.backend("generic"), _dispatch.trace() as record:
            luxlib.fast_activation("relu", x)
        assert record == [("fast_activation", "generic")]
        with pytest.raises(ValueError, match="gpu"):
            luxlib.fast_activation("relu", x)
    with pytest.raises(ZeroDivisionError), luxlib.backend("gpu"):
        1 / 0
    with _dispatch.trace() as record:
        luxlib.fast_activation("relu", x)  # no override left behind
    assert record == [("fast_activation", default_kind("fast_activation", x))]


@pytest.mark.parametrize("name", ["cuda", "Generic", "", None, "auto"])
def test_backend_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="backend"):
        with luxlib.backend(name):
            pass


@pytest.mark.parametrize(
    ("name", "x"),
    [
        ("gpu", np.ones(3)),
        ("gpu", np.ones(3, np.float32)),
        ("looped", np.ones(3, np.float16)),
        ("looped", np.ones(3, complex)),
    ],
    ids=["gpu-f64", "gpu-f32", "looped-f16", "looped-complex"],
)
def test_forcing_a_backend_that_cannot_take_the_arrays(name, x):
    with _dispatch.trace() as record, luxlib.backend(name):
        with pytest.raises((ValueError, TypeError)) as info:
            luxlib.fast_activation("relu", x)
    if x.dtype.kind == "f":  # complex fails validation first, with a TypeError
        assert info.type is ValueError and f"backend {name!r} cannot take" in str(info.value)
    assert record == []


def test_looped_override_on_numpy_floats():
    x = np.linspace(-1, 1, 4)
    with luxlib.backend("looped"), _dispatch.trace() as record:
        y = luxlib.fast_activation("relu", x)
    assert record == [("fast_activation", default_kind("fast_activation", x))]
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_run_falls_back_to_generic():
    op = f"dispatch_test_{uuid.uuid4().hex[:8]}"
    _dispatch.register(op, "generic", forward=lambda x, flag: ("generic", x), vjp=None)
    _dispatch.register(op, "looped", forward=lambda x, flag: ("looped", x), vjp=None, supports=lambda x, flag: flag)
    with _dispatch.trace() as record:
        assert _dispatch.run(op, (x64,), x=x64, flag=True)[0] == "looped"
        assert _dispatch.run(op, (x64,), x=x64, flag=False)[0] == "generic"  # declined
        assert _dispatch.run(op, (x16,), x=x16, flag=True)[0] == "generic"  # no such mode
    assert record == [(op, "looped"), (op, "generic"), (op, "generic")]
    with pytest.raises(ValueError, match="unknown backend kind"):
        _dispatch.register(op, "cuda", forward=None, vjp=None)


# --- reverse mode -------------------------------------------------------------------

_PROBE = {"seen": [], "barrier": None}


def _probe_forward(x):
    _PROBE["seen"].append(luxlib.within_gradient())
    if _PROBE["barrier"] is not None:
        _PROBE["barrier"].wait(timeout=30)
    return 2 * x


PROBE = activations.register(f"probe_{uuid.uuid4().hex[:8]}", _probe_forward, lambda x: 2 + 0 * x)


def test_within_gradient():
    _PROBE["seen"].clear()
    assert luxlib.within_gradient() is False
    luxlib.fast_activation(PROBE, np.ones(2))
    y, pullback = luxlib.vjp(luxlib.fast_activation, PROBE, np.ones(2))
    assert _PROBE["seen"] == [False, True]
    assert luxlib.within_gradient() is False
    np.testing.assert_array_equal(pullback(np.ones(2))[1], [2.0, 2.0])
    with pytest.raises(ValueError):
        luxlib.vjp(luxlib.bias_activation, PROBE, np.ones(2), np.ones(3))
    assert luxlib.within_gradient() is False, "an error inside vjp must not leave the flag set"


def test_within_gradient_is_per_thread():
    """While one thread is inside vjp, another thread is not within a gradient."""
    _PROBE["seen"].clear()
    _PROBE["barrier"] = threading.Barrier(2)
    try:
        with ThreadPoolExecutor(2) as pool:
            inside = pool.submit(luxlib.vjp, luxlib.fast_activation, PROBE, np.ones(2))
            outside = pool.submit(luxlib.fast_activation, PROBE, np.ones(2))
            inside.result(timeout=60), outside.result(timeout=60)
    finally:
        _PROBE["barrier"] = None
    assert sorted(_PROBE["seen"]) == [False, True]


@pytest.mark.parametrize(
    "f", [np.tanh, lambda x: x, activations.relu, luxlib.internal_operation_mode, "fast_activation"]
)
def test_vjp_rejects_non_luxlib_functions(f):
    with pytest.raises(TypeError, match="vjp: f must be a luxlib function"):
        luxlib.vjp(f, np.ones(3))


def test_vjp_rejects_extra_positional_arguments():
    with pytest.raises(TypeError, match="fast_activation takes 2 positional arguments, got 3"):
        luxlib.vjp(luxlib.fast_activation, "relu", np.ones(3), np.ones(3))


def test_pullback_checks_dy():
    y, pullback = luxlib.vjp(luxlib.bias_activation, "tanh", np.ones((2, 3)), np.ones(3))
    message = r"bias_activation pullback: dy must have the output's shape \(2, 3\), got \(3, 2\)"
    with pytest.raises(ValueError, match=message):
        pullback(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"got \(6,\)"):
        pullback(np.ones(6))
    with pytest.raises(TypeError, match="dy must have a floating dtype"):
        pullback(np.ones((2, 3), complex))
    # a dy of another float dtype, or an array-like, is taken in the output's dtype
    _, dx32, _ = pullback(np.ones((2, 3), np.float32))
    _, dx_list, _ = pullback([[1, 1, 1], [1, 1, 1]])
    assert dx32.dtype == dx_list.dtype == np.float64
    np.testing.assert_allclose(dx32, 1 - np.tanh(2.0) ** 2)
    np.testing.assert_array_equal(dx_list, dx32)


@pytest.mark.parametrize(
    ("x_dtype", "b_dtype"),
    [(np.float16, np.float64), (np.float64, np.float16), (np.float32, np.float64), (np.float64, np.float32)],
    ids=str,
)
def test_gradients_take_each_arguments_dtype(x_dtype, b_dtype):
    x = np.linspace(-2, 2, 12).reshape(4, 3)
    b = np.array([0.25, -0.5, 1.0])
    dy = np.linspace(1, 2, 12).reshape(4, 3)
    y, pullback = luxlib.vjp(luxlib.bias_activation, "sigmoid", x.astype(x_dtype), b.astype(b_dtype))
    act, dx, db = pullback(dy)
    assert act is None
    assert y.dtype == np.result_type(x_dtype, b_dtype)
    assert (dx.dtype, db.dtype) == (np.dtype(x_dtype), np.dtype(b_dtype))
    s = REFERENCE["sigmoid"](x.astype(x_dtype).astype(np.float64) + b.astype(b_dtype))
    tol = 1e-3 if np.float16 in (x_dtype, b_dtype) else 1e-6
    np.testing.assert_allclose(dx.astype(np.float64), dy * s * (1 - s), rtol=tol)
    np.testing.assert_allclose(db.astype(np.float64), (dy * s * (1 - s)).sum(0), rtol=tol)


# --- import hygiene -----------------------------------------------------------------


def test_import_pulls_in_no_gpu_or_torch():
    code = (
        "import sys, numpy as np, luxlib\n"
        "assert luxlib.__file__.startswith(sys.argv[1]), luxlib.__file__\n"
        "luxlib.bias_activation('gelu', np.ones((2, 3)), np.ones(3))\n"
        "y, pb = luxlib.vjp(luxlib.fast_activation, 'relu', np.ones(3, np.float32))\n"
        "pb(np.ones(3))\n"
        "print(sorted(m for m in ('cupy', 'cupyx', 'torch', 'jax') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- threads ------------------------------------------------------------------------


def test_threads_give_correct_results():
    rng = np.random.default_rng(0)
    jobs = [
        (act, rng.uniform(-3, 3, (8, 5, 6)).astype(dt), rng.uniform(-1, 1, 5).astype(dt))
        for act in ("relu", "gelu", "sigmoid", "softplus")
        for dt in (np.float32, np.float64)
    ] * 4

    def work(job):
        act, x, b = job
        y = luxlib.bias_activation(act, x, b)
        yv, pullback = luxlib.vjp(luxlib.bias_activation, act, x, b)
        return y, yv, pullback(np.ones_like(yv))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, jobs))
    for (act, x, b), (y, yv, (_, dx, db)) in zip(jobs, results):
        expected = REFERENCE[act]((x + b[:, None]).astype(np.float64))
        np.testing.assert_allclose(y, expected, rtol=2e-5, atol=1e-6)
        np.testing.assert_array_equal(yv, y)
        ref_dx, ref_db = luxlib.vjp(luxlib.bias_activation, act, x, b)[1](np.ones_like(y))[1:]
        np.testing.assert_array_equal(dx, ref_dx)
        np.testing.assert_array_equal(db, ref_db)


def test_backend_override_is_per_thread():
    """A thread inside ``backend("gpu")`` does not force the calls of another thread."""
    entered, done = threading.Barrier(2), threading.Barrier(2)
    x = np.ones(4)

    def forced():
        with luxlib.backend("gpu"):
            entered.wait(timeout=30)
            done.wait(timeout=30)
            with pytest.raises(ValueError, match="gpu"):
                luxlib.fast_activation("relu", x)

    def free():
        entered.wait(timeout=30)
        with _dispatch.trace() as record:
            y = luxlib.fast_activation("relu", x)
        done.wait(timeout=30)
        return y, record

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(forced), pool.submit(free)
        a.result(timeout=60)
        y, record = b.result(timeout=60)
    np.testing.assert_array_equal(y, x)
    assert record == [("fast_activation", default_kind("fast_activation", x))]
