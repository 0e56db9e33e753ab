"""The Cython/OpenMP normalization kernels against the generic path.

Reference: the generic path run in float64 on the same inputs (float32 inputs are
upcast exactly). Each output (``y``, the running statistics, every gradient) must
satisfy ``max|looped - reference| <= TOL[dtype] * max(1, max|reference|)`` with
``TOL = 1e-12`` (float64) and ``1e-5`` (float32, about 80 ulp: the kernels round
``xhat``, ``z`` and ``act'`` to float32 and accumulate in float64).
"""

import gc
import mmap
import platform
import sys
import weakref

import numpy as np
import pytest

import luxlib
from luxlib import activations
from luxlib._dispatch import _REGISTRY, trace
from luxlib._kernels import IMPORT_ERROR

if IMPORT_ERROR is not None:  # tests/test_config.py fails loudly in that case
    pytest.skip(f"kernels not built: {IMPORT_ERROR}", allow_module_level=True)

from luxlib._kernels import normalization as kernels  # noqa: E402
from _helpers import LAYOUTS, assert_unchanged, snapshot, with_layout  # noqa: E402
from _helpers import NORM_EPS as EPS  # noqa: E402
from _helpers import norm_call as call  # noqa: E402
from _helpers import norm_inputs as make_inputs  # noqa: E402
from _helpers import norm_outputs as outputs  # noqa: E402
from _helpers import norm_reference as reference  # noqa: E402

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-5, np.float64: 1e-12}

BOUND = [activations.leakyrelu.with_params(a=0.2), activations.trelu.with_params(theta=0.5)]
ACTS = list(activations.ACTIVATIONS.values()) + BOUND
ACT_IDS = [repr(a)[12:-1] for a in ACTS]
# identity, output-only, input-needing, bound parameter
SOME_ACTS = [activations.identity, activations.relu, activations.gelu, BOUND[0]]
SOME_IDS = ["identity", "relu", "gelu", "leakyrelu(a=0.2)"]

# (op, variant): batchnorm/instancenorm training with running statistics, inference
# with them (given statistics), and without them; layernorm's variant is its dims
VARIANTS = [
    ("batchnorm", "train"),
    ("batchnorm", "infer"),
    ("batchnorm", "none"),
    ("instancenorm", "train"),
    ("instancenorm", "infer"),
    ("groupnorm", 1),
    ("groupnorm", 3),
    ("layernorm", "default"),
    ("layernorm", (-1,)),
]
# odd sizes (1, 3, 17, 1023, 4097); the kernels' blocks are 1024 and runs 4096 long
SMALL = [(1, 3, 17), (2, 3, 1023), (1, 3, 4097), (3, 6, 1, 1), (2, 3, 5, 7)]
# above the serial threshold (32768): few channels / groups / rows (groups split into
# chunks of runs) and many
LARGE = [
    ("batchnorm", "train", (8, 2, 4097)),
    ("batchnorm", "none", (4, 17, 1023)),
    ("instancenorm", "train", (2, 3, 6001)),
    ("groupnorm", 2, (1, 4, 9001)),
    ("groupnorm", 3, (3, 6, 2001)),
    ("layernorm", (1,), (2, 33001)),
    ("layernorm", "default", (40, 3, 341)),
]

# groups of fewer than 64 elements stored back to back go through the kernels block by
# block (the tiny-groups path), above the serial threshold here: runs of 3 (the last
# block short), 63, two and four runs per group, layernorm rows of 8 and 63; then 64
# elements, the per-group kernels
TINY = [
    ("instancenorm", "train", (2731, 4, 3)),
    ("instancenorm", "infer", (600, 3, 63)),
    ("groupnorm", 3, (1200, 6, 5)),
    ("groupnorm", 2, (900, 8, 1, 4)),
    ("layernorm", "default", (4100, 2, 4)),
    ("layernorm", (-1,), (700, 3, 63)),
    ("groupnorm", 4, (600, 8, 32)),
    ("instancenorm", "train", (600, 3, 64)),
    ("layernorm", (-1,), (600, 64)),
]


def _geometry(op, variant, shape):
    """The kernels' geometry of an instancenorm, groupnorm or layernorm call (as the glue
    builds it; layernorm: rows of at most 4096 elements over the trailing axes)."""
    if op == "layernorm":
        length = int(np.prod(shape[1:] if variant == "default" else shape[-1:]))
        return (int(np.prod(shape)) // length, 1, length, length, length, length, 1, 0, length, True)
    n, c, s = shape[0], shape[1], int(np.prod(shape[2:]))
    if op == "instancenorm":
        return (n * c, 1, s, s, s, s, c, 1, 0, False)
    cg = c // variant
    return (n * variant, cg, cg * s, s, s, s, variant, cg, 1, False)


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads={n}")
def threads(request):
    luxlib.set_num_threads(request.param)
    yield request.param
    luxlib.set_num_threads(None)


def assert_close(got, want, dtype):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == dtype
        err = np.max(np.abs(g - w), initial=0)
        assert err <= TOL[dtype] * max(1.0, np.max(np.abs(w), initial=0)), f"max error {err:.3g}"


def check(op, variant, act, shape, dtype, seed=0):
    """The looped op ran (forward and vjp), agrees with the reference, mutated nothing."""
    x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, seed=seed)
    f, args, kwargs = call(op, variant, act, x, scale, bias, rm, rv)
    before = snapshot(x, scale, bias, rm, rv, dy)
    with trace() as record:
        plain = f(*args, **kwargs)
        got = outputs(f, args, kwargs, dy)
    assert record == [(op, "looped")] * 2
    assert_unchanged(before, (x, scale, bias, rm, rv, dy))
    np.testing.assert_array_equal(plain[0] if isinstance(plain, tuple) else plain, got[0])
    assert_close(got, reference(f, args, kwargs, dy), dtype)
    return got


def _valid(op, variant, shape):
    """Combinations the op accepts: groups divide C; a running variance needs n > 1."""
    if op == "groupnorm" and shape[1] % variant:
        return False
    return not (op == "instancenorm" and variant == "train" and np.prod(shape[2:]) == 1)


@pytest.mark.parametrize(
    "op, variant, shape",
    [(op, variant, shape) for op, variant in VARIANTS for shape in SMALL if _valid(op, variant, shape)],
    ids=str,
)
@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_generic_small(dtype, act, op, variant, shape):
    check(op, variant, act, shape, dtype)


@pytest.mark.parametrize("op, variant, shape", LARGE + TINY, ids=str)
@pytest.mark.parametrize("act", [activations.relu, activations.gelu], ids=["relu", "gelu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_generic_large(dtype, act, op, variant, shape, threads):
    check(op, variant, act, shape, dtype, seed=1)


@pytest.mark.parametrize("op, variant, shape", TINY, ids=str)
def test_tiny_groups_path(op, variant, shape, threads):
    """The TINY shapes take the path they are listed for: groups under 64 elements."""
    size = int(np.prod(shape))
    group = size // _geometry(op, variant, shape)[0]
    assert kernels.tiny_groups(_geometry(op, variant, shape), size) == (group < 64)


@pytest.mark.parametrize("act", ACTS, ids=ACT_IDS)
@pytest.mark.parametrize("op, variant", [VARIANTS[0], VARIANTS[4], VARIANTS[6], VARIANTS[7]], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_activation(dtype, op, variant, act):
    check(op, variant, act, (2, 3, 7), dtype, seed=2)


# layernorm rows with one scale/bias per element: the backward's sums prefetch dy and x
# ahead in groups of at most 16384 elements (PREFETCH_MAX), not in longer ones; odd lengths
# around its 32 lanes, 1024-element blocks and 4096-element runs; 40 rows of one element;
# rows under 64 elements take the tiny-groups path (2000 rows of 17: on two threads)
LAYERNORM_ROWS = [(40, 1), (3, 17), (2000, 17), (9, 1023), (5, 4097), (3, 16384), (2, 16385), (1, 40001)]


@pytest.mark.parametrize("rows, length", LAYERNORM_ROWS, ids=str)
@pytest.mark.parametrize("affine", ["both", "scale", "none"])
@pytest.mark.parametrize("act", [activations.identity, activations.relu, activations.gelu],
                         ids=["identity", "relu", "gelu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_layernorm_per_element_affine(dtype, act, affine, rows, length, threads):
    """Per-element scale/bias (or None), rows short and long: the kernel agrees with the
    generic path, forward and backward, for identity, an output-only activation and one
    that needs ``z``."""
    x, scale, bias, rm, rv, dy = make_inputs("layernorm", (-1,), (rows, length), dtype, seed=11)
    scale = scale if affine != "none" else None
    bias = bias if affine == "both" else None
    f, args, kwargs = call("layernorm", (-1,), act, x, scale, bias, rm, rv)
    with trace() as record:
        got = outputs(f, args, kwargs, dy)
    assert record == [("layernorm", "looped")]
    assert len(got) == 2 + (scale is not None) + (bias is not None)
    assert_close(got, reference(f, args, kwargs, dy), dtype)


def split_on_two_threads(op, variant, shape):
    """Whether two threads split groups into chunks (fewer than 8 groups of several runs)."""
    n, c = shape[:2]
    groups, runs = {
        "batchnorm": (c, n),
        "instancenorm": (n * c, 1),
        "groupnorm": (n * variant, c // variant if op == "groupnorm" else 0),
        "layernorm": (n, -(-int(np.prod(shape[1:])) // 4096)),
    }[op]
    return groups < 8 and runs > 1


@pytest.mark.parametrize("op, variant, shape", LARGE + TINY, ids=str)
def test_thread_counts(op, variant, shape):
    """Unsplit groups: identical results whatever the thread count; split groups and
    per-thread affine sums: deterministic for a thread count, otherwise within rounding."""
    x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, np.float64, seed=3)
    f, args, kwargs = call(op, variant, activations.relu, x, scale, bias, rm, rv)
    results = {}
    try:
        for n in (1, 2, 2):
            luxlib.set_num_threads(n)
            got = outputs(f, args, kwargs, dy)
            if n in results:
                for a, b in zip(got, results[n]):
                    np.testing.assert_array_equal(a, b)
            results[n] = got
    finally:
        luxlib.set_num_threads(None)
    assert_close(results[2], results[1], np.float64)
    if not split_on_two_threads(op, variant, shape):  # y, dx and the per-run sums do not depend on the thread count
        for a, b in zip(results[1], results[2]):
            if op != "layernorm" or a.shape == x.shape:
                np.testing.assert_array_equal(a, b)


# batchnorm with runs (spatial sizes) of at most 64 elements runs the rows-of-columns
# kernels: rows in blocks of at least 1024 elements (here 146 and 8 rows, the last block
# short; 1 row when a row is longer), one row, runs of 1, 2, 3 and 64; above the serial
# threshold (32768 elements) but the last
COLUMNS = [(5000, 7), (300, 40, 3), (30, 1500), (1, 4, 64), (800, 3, 1, 2), (40, 5)]


def _spy_kernels(monkeypatch):
    """Records which kernel entry points the glue calls."""
    seen = []
    for name in ("forward", "backward", "cols_forward", "cols_backward"):
        def spy(*args, _f=getattr(kernels, name), _name=name):
            seen.append(_name)
            return _f(*args)
        monkeypatch.setattr(kernels, name, spy)
    return seen


@pytest.mark.parametrize("shape", COLUMNS, ids=str)
@pytest.mark.parametrize("variant", ["train", "infer", "none"])
@pytest.mark.parametrize("act", SOME_ACTS, ids=SOME_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_batchnorm_columns(dtype, act, variant, shape, threads, monkeypatch):
    seen = _spy_kernels(monkeypatch)
    check("batchnorm", variant, act, shape, dtype, seed=5)
    assert seen == ["cols_forward"] * 2 + ["cols_backward"]


@pytest.mark.parametrize("s, columns", [(1, True), (64, True), (65, False)])
def test_batchnorm_columns_dispatch(s, columns, monkeypatch):
    """Runs of at most 64 elements take the column kernels, longer ones the group kernels;
    the two agree."""
    seen = _spy_kernels(monkeypatch)
    x, scale, bias, rm, rv, dy = make_inputs("batchnorm", "train", (6, 4, s), np.float64, seed=6)
    f, args, kwargs = call("batchnorm", "train", activations.gelu, x, scale, bias, rm, rv)
    got = outputs(f, args, kwargs, dy)
    assert seen == (["cols_forward", "cols_backward"] if columns else ["forward", "backward"])
    monkeypatch.setattr("luxlib._looped.normalization._COLS_MAX_RUN", 0 if columns else s)
    assert_close(outputs(f, args, kwargs, dy), got, np.float64)
    assert seen[2:] == (["forward", "backward"] if columns else ["cols_forward", "cols_backward"])


def test_batchnorm_columns_thread_counts():
    """Deterministic for a thread count; y and dx the same to rounding on 1 and 2."""
    x, scale, bias, rm, rv, dy = make_inputs("batchnorm", "train", (5000, 7), np.float64, seed=7)
    f, args, kwargs = call("batchnorm", "train", activations.gelu, x, scale, bias, rm, rv)
    results = {}
    try:
        for n in (1, 2, 2):
            luxlib.set_num_threads(n)
            got = outputs(f, args, kwargs, dy)
            for a, b in zip(got, results.get(n, got)):
                np.testing.assert_array_equal(a, b)
            results[n] = got
    finally:
        luxlib.set_num_threads(None)
    assert_close(results[2], results[1], np.float64)


def test_columns_kernel_checks():
    x, y = np.zeros((4, 6)), np.zeros((4, 6))
    v3, v2 = np.ones(3), np.ones(2)
    kernels.cols_forward(0, 0.0, x, v3, v3, y, np.empty(3), np.empty(3), False, EPS, 2)  # fits
    for args, match in [((x, v2, v3, y, np.empty(3), np.empty(3), False, EPS, 2), "scale"),
                        ((x, v3, v3, y, np.empty(2), np.empty(3), False, EPS, 2), "mean"),
                        ((x, v3, v3, y, np.empty(3), np.empty(3), False, EPS, 4), "geometry"),
                        ((x, v3, v3, y, np.empty(3), np.empty(3), False, EPS, 0), "geometry"),
                        ((np.zeros((0, 6)), v3, v3, np.zeros((0, 6)), np.empty(3), np.empty(3), False, EPS, 2),
                         "geometry"),
                        ((x, v3, v3, np.zeros((4, 5)), np.empty(3), np.empty(3), False, EPS, 2), "y must")]:
        with pytest.raises(ValueError, match=match):
            kernels.cols_forward(0, 0.0, *args)
    with pytest.raises(ValueError, match="activation"):
        kernels.cols_forward(99, 0.0, x, v3, v3, y, np.empty(3), np.empty(3), False, EPS, 2)
    with pytest.raises(ValueError, match="dy and dx"):
        kernels.cols_backward(0, 0.0, x, v3, v3, x, np.zeros((4, 5)), np.zeros(3), np.ones(3), True, EPS, 2)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op, variant", VARIANTS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_layouts(dtype, op, variant, layout):
    """Every array argument in the layout gives the C-contiguous results exactly."""
    x, scale, bias, rm, rv, dy = make_inputs(op, variant, (3, 6, 4, 5), dtype, seed=4)
    f, args, kwargs = call(op, variant, activations.gelu, x, scale, bias, rm, rv)
    want = outputs(f, args, kwargs, dy)
    lay = lambda a: with_layout(a, layout) if isinstance(a, np.ndarray) else a  # noqa: E731
    arrays = [lay(a) for a in (x, scale, bias, rm, rv, dy)]
    f, args, kwargs = call(op, variant, activations.gelu, *arrays[:5])
    with trace() as record:
        got = outputs(f, args, kwargs, arrays[5])
    assert record == [(op, "looped")]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "dims, scale_shape",
    [((0, 2), (4, 1, 6)), ((1,), (5, 1)), ((0,), (4, 1, 1)), ("all", (4, 5, 6)), ((1, 2), (6,))],
    ids=str,
)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_layernorm_axes_not_trailing(dtype, dims, scale_shape):
    """Reduced axes anywhere: x is copied to the layout where they are trailing."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 5, 6)).astype(dtype)
    scale = rng.uniform(0.5, 1.5, scale_shape).astype(dtype)
    bias = rng.standard_normal(scale_shape).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    args, kwargs = (x, scale, bias, activations.swish), {"dims": dims, "epsilon": EPS}
    with trace() as record:
        got = outputs(luxlib.layernorm, args, kwargs, dy)
    assert record == [("layernorm", "looped")]
    assert_close(got, reference(luxlib.layernorm, args, kwargs, dy), dtype)


def test_fallbacks_to_generic():
    """User activations, empty arrays and scale varying along a non-reduced axis."""
    x = np.random.default_rng(6).standard_normal((2, 3, 4))
    cube = activations.register("looped_norm_test_cube", lambda v: v**3, lambda v: 3 * v**2)
    with trace() as record:
        luxlib.groupnorm(x, None, None, 3, cube)
        luxlib.batchnorm(np.ones((0, 3, 4)), None, None, None, None, True)
        luxlib.layernorm(x, np.ones((3, 4)), None, dims=(2,))
        y = luxlib.layernorm(x, np.arange(4.0), None, dims=(2,))
    assert record == [("groupnorm", "generic"), ("batchnorm", "generic"), ("layernorm", "generic"),
                      ("layernorm", "looped")]
    with luxlib.backend("generic"):
        np.testing.assert_allclose(y, luxlib.layernorm(x, np.arange(4.0), None, dims=(2,)), rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_nan_inf_propagate(dtype):
    """A NaN or Inf poisons its own group only, as on the generic path."""
    for op, variant in VARIANTS:
        x, scale, bias, rm, rv, dy = make_inputs(op, variant, (3, 6, 5), dtype, seed=7)
        x[1, 1, 2] = np.nan
        x[0, 3, 0] = np.inf
        f, args, kwargs = call(op, variant, activations.relu, x, scale, bias, rm, rv)
        got = outputs(f, args, kwargs, dy)
        want = reference(f, args, kwargs, dy)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            finite = np.isfinite(b)
            np.testing.assert_array_equal(np.isfinite(a), finite)
            np.testing.assert_allclose(a[finite], b[finite], rtol=TOL[dtype] * 10, atol=TOL[dtype] * 10)


def _same_nonfinite(got, want):
    """NaN and Inf where the reference has them (signs included), close elsewhere."""
    for a, b in zip(got, want):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b))
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], rtol=1e-10, atol=1e-10)


# (op, shape, what is infinite): a given running mean with runs that are not a multiple of
# the 32 lanes (pass 1's padded tail step); an infinite scale on the column kernels'
# shapes (they hand it to the group kernels); an Inf in one chunk of a group split across
# two threads (the chunks' merge); plus an Inf in x on the column kernels
NONFINITE = [
    ("instancenorm", (2, 3, 33), "running_mean"),
    ("batchnorm", (2, 3, 65), "running_mean"),
    ("batchnorm", (300, 3), "scale"),
    ("batchnorm", (5, 2, 4095), "x"),
    ("batchnorm", (300, 3), "x"),
    ("instancenorm", (4000, 3, 5), "x"),  # tiny groups
    ("instancenorm", (3, 4, 7), "running_mean"),
]


@pytest.mark.parametrize("op, shape, where", NONFINITE, ids=str)
def test_infinities_follow_the_formulas(op, shape, where, threads):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    c = shape[1]
    scale, bias = np.ones(c), rng.uniform(0.1, 0.5, c)
    rm, rv = np.zeros(c), np.ones(c)
    dy = rng.standard_normal(shape)
    if where == "running_mean":  # one-signed: the scale gradient is -Inf there, not NaN
        dy = np.abs(dy) + 0.1
    if where == "running_mean":
        rm[0] = np.inf
    elif where == "scale":
        scale[0] = np.inf
    else:
        x[(0, c - 1) + (0,) * (x.ndim - 2)] = np.inf
    training = where != "running_mean"
    if op == "instancenorm":
        f, args, kwargs = luxlib.instancenorm, (x, scale, bias, training), dict(
            act=activations.leakyrelu, epsilon=EPS, running_mean=rm, running_var=rv, momentum=1.0)
    else:
        f, args, kwargs = luxlib.batchnorm, (x, scale, bias, rm, rv, training), dict(
            act=activations.leakyrelu, epsilon=EPS, momentum=1.0)
    with np.errstate(all="ignore"):
        got = outputs(f, args, kwargs, dy)
        (y, stats), pullback = luxlib.vjp(f, *args, **kwargs)
        with luxlib.backend("generic"):
            want = outputs(f, args, kwargs, dy)
            (_, want_stats), _ = luxlib.vjp(f, *args, **kwargs)
    _same_nonfinite(got, want)
    if training:
        _same_nonfinite(stats, want_stats)


@pytest.mark.parametrize("op", ["groupnorm", "layernorm"])
@pytest.mark.parametrize("act", [activations.identity, activations.relu], ids=["identity", "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_one_element_groups_give_zero_dx(dtype, act, op, threads):
    """``h - mean(h)`` cancels exactly (no fused multiply-add in the kernel's last pass),
    on every instruction-set version, serial and threaded (40001 groups of one element)."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((40001, 3, 1)).astype(dtype)
    scale, bias = rng.uniform(0.5, 1.5, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    if op == "groupnorm":
        args, kwargs = (x, scale, bias, 3, act), {"epsilon": EPS}
    else:
        args, kwargs = (x, scale[:1], bias[:1], act), {"dims": (2,), "epsilon": EPS}
    with trace() as record:
        _, pullback = luxlib.vjp(getattr(luxlib, op), *args, **kwargs)
        dx = pullback(dy)[0]
    assert record == [(op, "looped")]
    np.testing.assert_array_equal(dx, np.zeros_like(dx))


@pytest.mark.parametrize("act", [activations.relu, activations.gelu], ids=["relu", "gelu"])
def test_backward_does_not_keep_y(act):
    """The kernel recomputes ``y`` from ``x``, also for output-only activations."""
    x, scale, bias, *_ = make_inputs("groupnorm", 3, (2, 6, 5), np.float64)
    y, _ = _REGISTRY[("groupnorm", "looped")].vjp(act=act, x=x, scale=scale, bias=bias, groups=3, epsilon=1e-5)
    alive = weakref.ref(y.base if y.base is not None else y)
    del y
    gc.collect()
    assert alive() is None


def test_kernel_argument_checks():
    x = np.zeros(12)
    mean, var = np.zeros(3), np.ones(3)
    geom = (3, 1, 4, 4, 4, 4, 3, 1, 0, False)
    ones = np.ones(3)
    with pytest.raises(ValueError, match="unknown activation id 26"):
        kernels.forward(26, 0.0, x, ones, ones, np.empty(12), mean, var, False, 0.0, geom)
    with pytest.raises(ValueError, match="y must have 12 elements, got 11"):
        kernels.forward(0, 0.0, x, ones, ones, np.empty(11), mean, var, False, 0.0, geom)
    with pytest.raises(ValueError, match="bad geometry"):
        kernels.forward(0, 0.0, x, ones, ones, np.empty(12), mean, var, False, 0.0, (3, 1, 5, 5, 5, 5, 3, 1, 0, False))
    with pytest.raises(ValueError, match="mean must have 3 elements, got 2"):
        kernels.backward(0, 0.0, x, ones, ones, x, np.empty(12), mean[:2], var, True, 0.0, geom)


def _fresh(n, dtype):
    """An ``(n,)`` array on a new anonymous mapping no page of which is resident yet."""
    buf = mmap.mmap(-1, n * np.dtype(dtype).itemsize)
    return np.frombuffer(buf, dtype)


# the kernels stream (mincore, SSE2) on x86-64 Linux only
STREAMS = sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
# (name, shape holding n elements, activation) at >= 16 MiB of output; odd run lengths, so most
# runs start off the 16-byte alignment of the streaming stores
STREAM_CASES = [
    ("batchnorm", lambda n: (5, -(-n // 5 // 4099), 4099), activations.relu),  # one unit per group
    ("batchnorm-split", lambda n: (2, 1, -(-n // 2)), activations.identity),  # 1 group: chunks
    ("layernorm", lambda n: (-(-n // 1027), 1027), activations.gelu),
    ("instancenorm", lambda n: (-(-n // 21), 3, 7), activations.gelu),  # tiny groups
]


@pytest.mark.parametrize("case", STREAM_CASES, ids=lambda c: c[0])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_streamed_outputs_match(dtype, case, threads):
    """Outputs of >= 16 MiB whose pages are resident (reused buffers) are written with
    non-temporal stores (the forward's with one scale/bias per channel only), fresh
    ones (not yet faulted in) with ordinary stores: the same values bitwise, forward
    and backward."""
    name, shape_of, act = case
    n = (16 << 20) // np.dtype(dtype).itemsize + 1
    rng = np.random.default_rng(9)
    if name == "layernorm":
        rows, length = shape_of(n)
        geom = (rows, 1, length, length, length, length, 1, 0, length, True)
        ngroups, naffine = rows, length
    elif name == "instancenorm":
        nb, c, s = shape_of(n)
        geom = _geometry(name, None, (nb, c, s))
        ngroups, naffine = nb * c, c
    else:
        nb, c, s = shape_of(n)
        geom = (c, nb, s, c * s, s, s, c, 1, 0, False)
        ngroups, naffine = c, c
    size = (geom[0] - 1) * geom[2] + (geom[1] - 1) * geom[3] + geom[5]
    x = (rng.standard_normal(size) * 2 + 0.5).astype(dtype)
    dy = rng.standard_normal(size).astype(dtype)
    scale = rng.uniform(0.5, 1.5, naffine).astype(dtype)
    bias = rng.standard_normal(naffine).astype(dtype)
    results = []
    for out in (_fresh, lambda m, d: np.full(m, np.nan, d)):
        y, dx = out(size, dtype), out(size, dtype)
        assert kernels.streams_output(y) == (out is not _fresh and STREAMS)
        mean, var = np.empty(ngroups), np.empty(ngroups)
        kernels.forward(act.id, 0.0, x, scale, bias, y, mean, var, False, EPS, geom)
        sums = kernels.backward(act.id, 0.0, x, scale, bias, dy, dx, mean, var, True, EPS, geom)
        results.append((y.copy(), dx.copy(), mean, var, *sums))
    assert not np.isnan(results[1][0]).any()
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_columns_statistics_of_offset_data():
    """As below, for the column kernels: (N, C) data far from 0 whose first rows are
    outliers; the shift is the mean of a channel's first 8 elements (8 rows here).
    Checked: y and dx, which the statistics determine (the scale gradient, a sum of
    ``g * xhat`` with xhat up to 22 here, is ~4e-12 off on either kernel)."""
    rng = np.random.default_rng(10)
    x = 1e3 + rng.standard_normal((4097, 3))
    x[:8, 1] += 500
    scale, bias = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    f, args = luxlib.batchnorm, (x, scale, bias, None, None, True, activations.relu)
    dy = rng.standard_normal(x.shape)
    got = outputs(f, args, {"epsilon": EPS}, dy)
    assert_close(got[:2], reference(f, args, {"epsilon": EPS}, dy)[:2], np.float64)


@pytest.mark.parametrize("op", ["batchnorm", "layernorm"])
def test_statistics_of_offset_data(op):
    """float64 statistics of data far from 0 (mean 1e3, std 1) and of groups that start
    with outliers keep the float64 tolerance: the one-pass moments are taken about a
    shift (the mean of a group's first elements); unshifted, ``E[x^2] - E[x]^2`` would
    lose about 20 bits here."""
    rng = np.random.default_rng(10)
    x = 1e3 + rng.standard_normal((4, 3, 4097))
    x[:, 1, :8] += 500  # the shift sits 500 std away from the group's mean
    scale, bias = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    dy = rng.standard_normal(x.shape)
    if op == "batchnorm":
        f, args = luxlib.batchnorm, (x, scale, bias, None, None, True, activations.relu)
    else:
        f, args = luxlib.layernorm, (x, scale[:1], bias[:1], activations.relu)
    kwargs = {"epsilon": EPS} if op == "batchnorm" else {"dims": (2,), "epsilon": EPS}
    with trace() as record:
        got = outputs(f, args, kwargs, dy)
    assert record == [(op, "looped")]
    assert_close(got, reference(f, args, kwargs, dy), np.float64)
