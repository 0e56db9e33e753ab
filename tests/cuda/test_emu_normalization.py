"""The CUDA normalization kernels run on the CPU (tests/cuda/emu) through the same launch
code as on a GPU (``luxlib.cuda._normalization``), against the generic path.

The emulated implementation is put in place of the generic one for the duration of a
call, so the public functions run it with their own validation, promotion, ``NormStats``
and ``luxlib.vjp``'s gradient shapes. Reference: the generic path run in float64 on the
same inputs (upcast exactly). Each output (``y``, the running statistics, every gradient)
must satisfy ``max|kernel - reference| <= TOL[dtype] * max(1, max|reference|)``: 1e-12
(float64), 1e-5 (float32: the kernels round ``xhat``, ``z`` and ``act'`` to float32 and
accumulate in double), 1e-3 (float16: computed in float32, every stored value rounded
once to float16, 2**-11 relative).
"""

import emu_module
import numpy as np
import pytest
import sanitized
from _helpers import (
    ALL_ACT_IDS,
    ALL_ACTS,
    LAYOUTS,
    assert_unchanged,
    norm_outputs,
    snapshot,
    with_layout,
)
from _helpers import NORM_EPS as EPS
from _helpers import norm_call as call
from _helpers import norm_inputs as make_inputs
from _helpers import norm_reference as reference

import luxlib
from luxlib import activations
from luxlib._dispatch import _REGISTRY, _Impl
from luxlib.cuda import _modules, _normalization
from luxlib.cuda._modules import kernel_name, struct_arg, tuning


DTYPES = [np.float16, np.float32, np.float64]
TOL = {np.float16: 1e-3, np.float32: 1e-5, np.float64: 1e-12}
SCHEDULES = ["inorder", "shuffle"]
# identity, output-only, input-needing, bound parameter
ACTS = [activations.identity, activations.relu, activations.gelu, activations.leakyrelu.with_params(a=0.2)]

# (op, variant, shape): batchnorm/instancenorm training with running statistics ("train"),
# inference with them ("infer"), without them ("none", training False: batch statistics);
# groupnorm's variant is the group count, layernorm's its dims. Reduction lengths around
# the reduction block (at most 256 threads, a multiple of 32 covering the chunk): 1, 10,
# 128 x 2, 255, 256, 257, and (N, C) inputs (runs of one element); batchnorm channels of
# 315 and 300 elements in runs of 45 and 1, so that a thread's steps cross runs.
CASES = [
    ("batchnorm", "train", (2, 3, 5)),
    ("batchnorm", "train", (1, 2, 257)),
    ("batchnorm", "train", (5, 3)),
    ("batchnorm", "train", (7, 2, 45)),
    ("batchnorm", "none", (300, 3)),
    ("batchnorm", "infer", (3, 2, 7)),
    ("batchnorm", "none", (1, 3, 1)),
    ("batchnorm", "none", (2, 2, 128)),
    ("instancenorm", "train", (1, 2, 255)),
    ("instancenorm", "infer", (2, 3, 4, 2)),
    ("instancenorm", "none", (1, 2, 256)),
    ("groupnorm", 1, (2, 6, 5)),
    ("groupnorm", 3, (2, 6, 1)),
    ("groupnorm", 2, (1, 4, 64)),
    ("groupnorm", 4, (1, 4, 3)),
    ("layernorm", "default", (3, 4, 5)),
    ("layernorm", (-1,), (2, 3, 33)),
    ("layernorm", (0, 2), (3, 4, 5)),
    ("layernorm", "all", (257,)),
    ("layernorm", None, (2, 3, 4)),
]

_MODULES = {}


def emu(schedule="inorder", seed=1234, max_blocks=None, min_chunk=None, wide=False, rows_max=None):
    key = (schedule, seed, max_blocks, min_chunk, wide, rows_max)
    if key not in _MODULES:
        mod = emu_module.EmuModule("normalization", schedule=schedule, seed=seed, max_blocks=max_blocks)
        if min_chunk is not None:
            mod.norm_min_chunk = min_chunk  # the launch code's test hook: more, shorter chunks
        if rows_max is not None:
            mod.norm_rows_max = rows_max  # test hook: layernorm rows longer than this take the general kernels
        if wide:
            mod.norm_wide_index = True  # test hook: 64-bit indices in the elementwise kernels
        _MODULES[key] = mod
    return _MODULES[key]


def outputs(f, args, kwargs, dy):
    """``norm_outputs`` of one vjp call, and the plain call's ``y`` (run first)."""
    with np.errstate(all="ignore"):
        plain = f(*args, **kwargs)
    return norm_outputs(f, args, kwargs, dy), plain[0] if isinstance(plain, tuple) else plain


class emulated:
    """Within the block, ``op``'s generic implementation is the CUDA launch code on the
    emulator (``luxlib.backend("generic")`` routes every dtype there); records the calls."""

    def __init__(self, mod, op):
        self.mod, self.op, self.calls = mod, op, []

    def _run(self, with_vjp, **kw):
        assert _normalization.SUPPORTS[self.op](**kw), "the GPU implementation declined the call"
        self.calls.append(with_vjp)
        return _normalization.OPS[self.op](self.mod, with_vjp, **kw)

    def __enter__(self):
        self.saved = _REGISTRY[(self.op, "generic")]
        _REGISTRY[(self.op, "generic")] = _Impl(
            forward=lambda **kw: self._run(False, **kw), vjp=lambda **kw: self._run(True, **kw)
        )
        self.ctx = luxlib.backend("generic")
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)
        _REGISTRY[(self.op, "generic")] = self.saved


def run_emulated(mod, f, args, kwargs, dy):
    arrays = [a for a in args if isinstance(a, np.ndarray)] + [v for v in kwargs.values() if isinstance(v, np.ndarray)]
    before = snapshot(*arrays, dy)
    with emulated(mod, f.__name__) as e:
        got, plain = outputs(f, args, kwargs, dy)
    assert e.calls == [False, True]
    assert_unchanged(before, arrays + [dy])
    np.testing.assert_array_equal(plain, got[0])
    return got


def assert_close(got, want, dtype, what=""):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == dtype, f"{what} output {k}"
        err = np.max(np.abs(g.astype(np.float64) - w), initial=0)
        assert err <= TOL[dtype] * max(1.0, np.max(np.abs(w), initial=0)), f"{what} output {k}: max error {err:.3g}"


def check(mod, op, variant, act, shape, dtype, affine=True, seed=0):
    x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, affine, seed)
    f, args, kwargs = call(op, variant, act, x, scale, bias, rm, rv)
    got = run_emulated(mod, f, args, kwargs, dy)
    assert_close(got, reference(f, args, kwargs, dy), dtype, f"{op} {variant} {shape} {act!r} affine={affine}")
    return got


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("op, variant, shape", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_generic(dtype, op, variant, shape, schedule):
    mod = emu(schedule)
    for act in ACTS:
        check(mod, op, variant, act, shape, dtype)
    if variant is not None:  # layernorm dims=None takes its axes from scale/bias
        check(mod, op, variant, activations.relu, shape, dtype, affine=False)


# two-stage reductions: chunks of at least 64 elements (2 rows of layernorm's column
# kernel), grids of elementwise and finalize kernels capped at 2 blocks (grid-stride loops)
CHUNKED = [
    ("batchnorm", "train", (5, 2, 40)),
    ("batchnorm", "none", (300, 2)),
    ("instancenorm", "train", (1, 2, 300)),
    ("groupnorm", 2, (2, 4, 50)),
    ("layernorm", "default", (40, 3, 11)),
    ("layernorm", (1,), (3, 200)),
    # more partials than the finalize kernels' LX_NORM_ROWS threads a unit: 16 chunks a unit;
    # groupnorm's backward, 2 units of 5 chunks a group and 2 samples of 5 an affine element
    ("instancenorm", "train", (1, 2, 1000)),
    ("groupnorm", 2, (2, 4, 300)),
]


@pytest.mark.parametrize("op, variant, shape", CHUNKED, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_two_stage(dtype, op, variant, shape):
    mod = emu("shuffle", max_blocks=2, min_chunk=64)
    for act in (activations.relu, activations.gelu):
        check(mod, op, variant, act, shape, dtype, seed=1)


# more groups and channels than a grid of 2 blocks has threads (512): the per-group and
# per-channel kernels (statistics finalize, given statistics, running update, backward
# finalize) stride over them, and the per-unit reductions (statistics and backward
# partials) loop over their units two blocks at a time
MANY_CHANNELS = [
    ("batchnorm", "train", (3, 600, 2)),
    ("batchnorm", "infer", (2, 600, 3)),
    ("instancenorm", "train", (2, 300, 3)),
    ("instancenorm", "infer", (2, 300, 2)),
    ("groupnorm", 600, (1, 1200, 2)),
]


@pytest.mark.parametrize("op, variant, shape", MANY_CHANNELS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_per_group_kernels_stride(dtype, op, variant, shape):
    mod = emu("shuffle", max_blocks=2)
    check(mod, op, variant, activations.relu, shape, dtype, seed=2)


# more units than a grid of 2 finalize blocks covers at once (64), each of several chunks
FINALIZE_STRIDES = [("instancenorm", "train", (2, 300, 200)), ("batchnorm", "train", (300, 70)),
                    ("groupnorm", 100, (1, 200, 300))]


@pytest.mark.parametrize("op, variant, shape", FINALIZE_STRIDES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_finalize_kernels_stride_over_chunked_units(dtype, op, variant, shape):
    """The finalize kernels (32 units a block, the partials split over threadIdx.y) loop
    over the units with the grid capped at 2 blocks, every unit of several chunks: a tile's
    shared sums must be read before the next tile writes them (shuffled schedule)."""
    mod = emu("shuffle", max_blocks=2, min_chunk=64)
    units = _normalization._channel_geometry(shape, {"instancenorm": "instance", "batchnorm": "batch",
                                                     "groupnorm": "group"}[op], variant if op == "groupnorm" else 1)
    assert units.stats.units > 64 or _normalization._are_columns(units.stats)
    check(mod, op, variant, activations.gelu, shape, dtype, seed=4)


def test_two_stage_cases_are_chunked():
    """The CHUNKED cases do split their reductions (statistics, or layernorm's rows: over
    2 blocks, the first of several tiles where there are enough rows)."""
    mod = emu("shuffle", max_blocks=2, min_chunk=64)
    for op, variant, shape in CHUNKED:
        if op == "layernorm":
            rows = shape[0]
            length = int(np.prod(shape)) // rows
            grid, _, rchunk = _normalization._row_launch(tuning(mod), rows, length)
            assert grid == (2,) and (rows < 8 or rchunk > _normalization.ROWS_TILE), shape
            continue
        kind = {"batchnorm": "batch", "instancenorm": "instance", "groupnorm": "group"}[op]
        geom = _normalization._channel_geometry(shape, kind, variant if op == "groupnorm" else 1)
        assert _normalization._chunks(tuning(mod), geom.stats.units, geom.stats.length)[0] > 1, shape


# batchnorm of (N, C) inputs (and (N, C, 1, 1)): columns of 1, 31, 33 and 70 channels, a
# row or rows over several chunks (chunks of at least 2 rows with min_chunk=64)
COLUMN_CASES = [("none", (1, 33)), ("train", (9, 1)), ("train", (300, 31)), ("none", (77, 70)),
                ("train", (40, 33, 1, 1))]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("variant, shape", COLUMN_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_batchnorm_columns(dtype, variant, shape, schedule):
    """batchnorm whose channels are the columns of x (one element per channel and sample)
    takes the column kernels, for the statistics and the backward sums, one chunk or
    several, and matches the generic path."""
    for min_chunk in (None, 64):
        mod = recorded(emu(schedule, min_chunk=min_chunk))
        for act in (activations.identity, activations.gelu):
            check(mod, "batchnorm", variant, act, shape, dtype, seed=shape[0])
        launched = set(mod.names)
        assert {"norm_stats_cols_partial", "norm_backward_cols_partial"} <= launched, launched
        assert not {"norm_stats_partial", "norm_backward_partial"} & launched, launched
        if min_chunk and shape[0] >= 40:
            units = _normalization._channel_geometry(shape, "batch").stats
            assert _normalization._column_chunks(tuning(mod), units.units, units.length)[1] > 1, shape


class recorded:
    """A kernel module that records the names of the kernels launched through it."""

    def __init__(self, mod):
        self.mod, self.names = mod, []

    def __getattr__(self, name):  # the launch code's hooks (max_blocks, norm_rows_max...)
        return getattr(self.mod, name)

    def get_function(self, name):
        self.names.append(name.split("<")[0])
        return self.mod.get_function(name)


# layernorm rows: lengths around a warp, a lane's 4 columns of the forward (128) and the
# backward's block (512 threads of up to 2 columns), up to their limit (1024) and beyond it
# (the general kernels); 5 rows (an odd last tile), 9 rows over blocks of several tiles (grid
# capped at 2), 19 rows over one block (the forward's warps take 3 or 2 rows each)
ROW_LENGTHS = [1, 31, 32, 33, 100, 128, 129, 257, 512, 513, 1024, 1025]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("length", ROW_LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_layernorm_rows_kernels(dtype, length, schedule):
    """The rows kernels (rows up to ROWS_MAX) and the general kernels (forced with
    ``norm_rows_max = 0``; rows beyond ROWS_MAX take them anyway), each against the generic
    path; the kernels launched are the expected ones."""
    rows_kernels = length <= _modules.ROWS_MAX
    for rows, max_blocks in ((5, None), (9, 2), (19, 1)):
        for general in (False, True):
            mod = recorded(emu(schedule, max_blocks=max_blocks, rows_max=0 if general else None))
            for act in (activations.identity, activations.gelu):
                check(mod, "layernorm", (-1,), act, (rows, length), dtype, seed=length)
            launched = set(mod.names)
            if rows_kernels and not general:
                assert launched == {"norm_rows_forward", "norm_rows_backward", "norm_cols_finalize"}, launched
            else:
                assert "norm_rows_forward" not in launched and "norm_backward_dx_cols" in launched, launched
            if not rows_kernels:
                break  # norm_rows_max = 0 changes nothing


def test_layernorm_rows_launch():
    """Blocks of whole tiles over every row: one per 32 rows, or 264 of fewer rows when that
    gives fewer, at most max_blocks (65535 by default); L threads rounded up to a warp, or
    (L > 512) L / 2 of them, 2 columns each."""
    def launch(rows, length, max_blocks=None):
        grid, block, rchunk = _normalization._row_launch(tuning(emu(max_blocks=max_blocks)), rows, length)
        assert rchunk % _normalization.ROWS_TILE == 0
        assert (grid[0] - 1) * rchunk < rows <= grid[0] * rchunk
        return grid[0], block[0], rchunk

    assert launch(1, 1) == (1, 32, 2)
    assert launch(5, 33) == (3, 64, 2)
    assert launch(32768, 768) == (1024, 384, 32)
    assert launch(32769, 1024) == (964, 512, 34)
    assert launch(2048, 768) == (256, 384, 8)
    assert launch(3, 513) == (2, 288, 2)
    assert launch(2**20, 64) == (32768, 64, 32)
    assert 65000 < launch(2**30, 8)[0] <= 65535
    assert launch(9, 100, max_blocks=2) == (2, 128, 6)


# doubles just above a half-way point between two neighbours in float16 (2^-11 apart at 1,
# 2^-13 at 0.3) and in float32: through float, the first three round to the tie, then to even
ROUNDING_TRAPS = np.array([1 + 2**-11 + 2**-30, -(1 + 3 * 2**-11 + 2**-31), 0.3 + 2**-14 + 2**-40,
                           1 + 2**-24 + 2**-60, 2.00684, 1.5])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_double_results_are_rounded_once(dtype):
    """The kernels that store double sums in x's dtype (running statistics, the backward
    finalizers' sums of g and g xhat) round once, as the glue's ``astype`` does."""
    mod, v, n = emu(), ROUNDING_TRAPS, len(ROUNDING_TRAPS)
    want = v.astype(dtype)
    if dtype == np.float16:
        assert not np.array_equal(want, v.astype(np.float32).astype(dtype))  # the traps bite
    # momentum 1: new = 0 * running + 1 * mean, new_var = unbiased (1 / (1 - 1/2)) * var
    zeros = np.zeros(n, dtype)
    new_mean, new_var = _normalization._running_update(mod, tuning(mod), v, v / 2, (2, n), zeros, zeros, 1.0, False)
    np.testing.assert_array_equal(new_mean, want)
    np.testing.assert_array_equal(new_var, want)
    # one unit per affine element, one chunk: the sums are the partials themselves
    sums = np.empty((2, n), dtype)
    part = np.stack([np.zeros(n), np.zeros(n), v, -v], axis=1).ravel()
    mh, mhx = np.empty(n), np.empty(n)
    mod.get_function(kernel_name("norm_backward_finalize", dtype))(
        (1,), _normalization.COLS_BLOCK,
        (part, mh, mhx, sums[0], sums[1], struct_arg(_normalization.BWD_FINALIZE_ARGS, groups=n, sdiv=1, nchunks=1,
                                                     amod=n, units=n, nsum=4, count=1.0)))
    np.testing.assert_array_equal(sums, [want, -want])
    sums = _normalization._column_sums(mod, np.stack([v, -v], axis=1).ravel(), 1, n, dtype)
    np.testing.assert_array_equal(sums, [want, -want])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_running_update_in_the_finalize(dtype, schedule):
    """batchnorm's statistics finalize also updates the running statistics: bit for bit what
    the separate update kernel (instancenorm's) computes from the finalized statistics, on
    the per-unit and the column kernels, one chunk or several, grids capped at 2 blocks."""
    mod = emu(schedule, max_blocks=2, min_chunk=64)
    tun = tuning(mod)
    for shape in [(4, 3, 50), (200, 5), (3, 70, 2)]:
        x, _, _, rm, rv, _ = make_inputs("batchnorm", "train", shape, dtype, seed=sum(shape))
        units = _normalization._channel_geometry(shape, "batch").stats
        for momentum in (0.1, 0.9):
            mean, rstd, new = _normalization._statistics(mod, tun, x, units, EPS, (rm, rv, momentum, False))
            # the plain finalize (its var too), then the update kernel
            part_sums, nparts, finalize = _normalization._stats_plan(tun, units, dtype, EPS)
            part, (mean2, var, rstd2) = np.empty(nparts), (np.empty(units.units) for _ in range(3))
            _modules.launch(mod, part_sums, (x, part))
            _modules.launch(mod, finalize, (part, mean2, var, rstd2))
            want = _normalization._running_update(mod, tun, mean2, var, shape, rm, rv, momentum, False)
            for got, ref in ((mean, mean2), (rstd, rstd2)) + tuple(zip(new, want)):
                np.testing.assert_array_equal(got, ref, err_msg=f"{shape} {momentum}")
                assert got.dtype == ref.dtype


def test_statistics_of_offset_data():
    """float64 statistics of data far from 0 (mean 1e4, std 2) keep the tolerance: the
    one-pass statistics sum deviations from a value of the chunk (unshifted sums of x and
    x^2 lose about 1e-9 of the variance here), the rows kernels deviations from the row's
    mean. Chunks of 64 elements, so several per unit are merged. Checked: y, which the
    statistics determine (gradients sum products of x - mean, whose rounding at 1e4 is
    ~1e-12 on any path; float32 kernels round the mean to float32 for xhat: ~1e-4 here)."""
    dtype = np.float64
    mod = emu("shuffle", min_chunk=64)
    for op, variant, shape in [("batchnorm", "train", (5, 2, 40)), ("instancenorm", "none", (2, 3, 70)),
                               ("groupnorm", 2, (2, 4, 50)), ("layernorm", "default", (4, 3, 11)),
                               ("layernorm", (-1,), (3, 1025))]:
        x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, seed=8)
        x = x + 1e4
        f, args, kwargs = call(op, variant, activations.relu, x, scale, bias, rm, rv)
        got, want = run_emulated(mod, f, args, kwargs, dy), reference(f, args, kwargs, dy)
        assert_close(got[:1], want[:1], dtype, f"{op} {shape}")


# an infinity in x at the first element of its reduction (the kernels' shift) or after it
INFINITE_CASES = [("layernorm", (-1,), (3, 7), 1), ("layernorm", (-1,), (3, 7), 0),
                  ("layernorm", (-1,), (2, 1100), 5), ("batchnorm", "none", (6, 3), 1),
                  ("batchnorm", "none", (4, 3, 5), 1), ("groupnorm", 1, (2, 2, 3), 1)]


@pytest.mark.parametrize("op, variant, shape, at", INFINITE_CASES, ids=str)
def test_infinities_follow_the_formulas(op, variant, shape, at):
    """An infinite x makes its group's mean infinite and its variance NaN, as the formulas
    (and the generic path) do: every output is NaN where the reference's is, +-Inf where
    its is, and close elsewhere. (The shifted one-pass sums give inf - inf there; a clamp
    of that to 0 would leave a finite rstd and silently finite outputs.)"""
    dtype = np.float32
    mod = emu("shuffle")
    x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, True, 3)
    x.flat[at] = np.inf
    for act in (activations.identity, activations.relu):
        f, args, kwargs = call(op, variant, act, x, scale, bias, rm, rv)
        with np.errstate(all="ignore"):
            got, want = run_emulated(mod, f, args, kwargs, dy), reference(f, args, kwargs, dy)
        for k, (g, w) in enumerate(zip(got, want)):
            g = g.astype(np.float64)
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=f"{op} {shape} output {k}")
            np.testing.assert_array_equal(np.isposinf(g), np.isposinf(w), err_msg=f"{op} {shape} output {k}")
            np.testing.assert_array_equal(np.isneginf(g), np.isneginf(w), err_msg=f"{op} {shape} output {k}")
            fin = np.isfinite(w)
            assert_close([g[fin].astype(dtype)], [w[fin]], dtype, f"{op} {shape} output {k}")
    assert np.isnan(got[0]).any()


def test_rows_constants_match_the_kernels():
    """The launch code's ROWS_TILE, ROWS_THREADS, ROWS_WARPS and ROWS_MAX are normalization.cu's
    tile, __launch_bounds__ and columns a thread (a larger block would fail to launch on a GPU)."""
    import re

    from luxlib.cuda import _modules

    src = _modules.read_source("normalization.cu")
    const = {k: int(v) for k, v in re.findall(r"#define (LX_ROWS_\w+) (\d+)", src)}
    assert const["LX_ROWS_TILE"] == _normalization.ROWS_TILE
    assert const["LX_ROWS_THREADS"] == _normalization.ROWS_THREADS
    assert const["LX_ROWS_COLS"] * const["LX_ROWS_THREADS"] == _modules.ROWS_MAX
    assert const["LX_ROWS_WARPS"] == _normalization.ROWS_WARPS
    assert const["LX_ROWS_LANE_COLS"] * 32 == _modules.ROWS_MAX
    assert src.count("__launch_bounds__(LX_ROWS_THREADS)") == 1
    assert src.count("__launch_bounds__(LX_ROWS_WARPS * LX_WARP)") == 1


@pytest.mark.parametrize("act", ALL_ACTS, ids=ALL_ACT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_activation(dtype, act):
    mod = emu("shuffle")
    check(mod, "batchnorm", "train", act, (2, 3, 7), dtype, seed=2)
    check(mod, "layernorm", "default", act, (3, 2, 5), dtype, seed=2)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_one_element_groups_give_zero_dx(dtype):
    """h - mean(h) cancels exactly: with one element per group dx is exactly 0."""
    mod = emu()
    for op, variant, shape in [("batchnorm", "none", (1, 3, 1)), ("groupnorm", 3, (2, 3)),
                               ("layernorm", "default", (4, 1))]:
        x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype)
        f, args, kwargs = call(op, variant, activations.gelu, x, scale, bias, rm, rv)
        with emulated(mod, op):
            _, pullback = luxlib.vjp(f, *args, **kwargs)
            np.testing.assert_array_equal(pullback(dy)[0], np.zeros(shape, dtype))


def test_schedule_and_grid_do_not_change_results():
    """Reductions combine in a fixed order: bit-identical under every schedule and grid."""
    for op, variant, shape in [("batchnorm", "train", (5, 2, 40)), ("groupnorm", 2, (2, 4, 50)),
                               ("layernorm", "default", (40, 3, 11))]:
        results = []
        for mod in (emu("inorder", min_chunk=64), emu("shuffle", seed=5, min_chunk=64),
                    emu("shuffle", seed=9, max_blocks=2, min_chunk=64)):
            x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, np.float32, seed=4)
            results.append(run_emulated(mod, *call(op, variant, activations.gelu, x, scale, bias, rm, rv), dy))
        for other in results[1:]:
            for a, b in zip(results[0], other):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_index_widths_give_identical_results(dtype):
    """The elementwise kernels' 32-bit and 64-bit index paths (group and affine index by
    multiply-shift divisions) agree bit for bit, also in the grid-stride loops; the
    64-bit path is the one of arrays of 2**31 elements and more."""
    for op, variant, shape in CASES + CHUNKED:
        x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, seed=3)
        f, args, kwargs = call(op, variant, activations.gelu, x, scale, bias, rm, rv)
        narrow, wide = (run_emulated(emu("shuffle", max_blocks=2, wide=w), f, args, kwargs, dy) for w in (False, True))
        for a, b in zip(narrow, wide):
            np.testing.assert_array_equal(a, b, err_msg=f"{op} {variant} {shape}")


def test_index_width_choice():
    """32-bit indices exactly while n + UNROLL grid strides stays within 2**31 (no index or
    increment overflows), with the divisors' 32-bit constants; 64-bit ones beyond."""
    geom = _normalization._channel_geometry((2, 3, 5), "group", 3)

    def width(n, grid, wide=False):
        args = _normalization._index_args(tuning(emu(wide=wide)), n, grid, geom)
        assert args["n"] == n
        assert args["qdiv"]["mul"] == _normalization.divisor(geom.elem[0], 64 if args["wide"] else 32)[1]
        return int(args["wide"])

    u = _normalization.UNROLL
    assert width(2**31 - u * 256, (1,)) == 0
    assert width(2**31 - u * 256 + 1, (1,)) == 1
    assert width(2**31 - u * 65535 * 256, (65535,)) == 0
    assert width(2**31 - u * 65535 * 256 + 1, (65535,)) == 1
    assert width(30, (1,), wide=True) == 1


# the elementwise kernels' 16-byte packs (8 halves, 4 floats, 2 doubles): pack-sized groups
# and affine runs for every dtype; layernorm (rows longer than the rows kernels take, with
# rows_max=16) with an affine index per element; a batchnorm over several grid strides of a
# 2-block grid
PACK_CASES = [
    ("batchnorm", "train", (3, 2, 16)),
    ("batchnorm", "infer", (2, 3, 8)),
    ("instancenorm", "train", (2, 3, 24)),
    ("groupnorm", 2, (2, 4, 8)),
    ("layernorm", "default", (5, 4, 8)),
    ("batchnorm", "train", (4, 3, 800)),
]


def _elementwise_vec(op, variant, shape, dtype, mod):
    """Whether the elementwise kernels of the case are planned with packs."""
    if op == "layernorm":
        geom = _normalization._rows_geometry(shape[0], int(np.prod(shape[1:])))
        assert not _normalization._rows_path(tuning(mod), geom)
    else:
        kind = {"batchnorm": "batch", "instancenorm": "instance", "groupnorm": "group"}[op]
        geom = _normalization._channel_geometry(shape, kind, variant if op == "groupnorm" else 1)
    plan = _normalization._elementwise_plan(tuning(mod), "norm_forward", np.dtype(dtype), int(np.prod(shape)), geom)
    return bool(plan[3]["vec"])


def _unaligned(a):
    """``a`` C-contiguous at one element past a 16-byte boundary."""
    buf = np.empty(a.size + 1, a.dtype)
    assert buf.ctypes.data % 16 == 0
    out = buf[1:].reshape(a.shape)
    out[...] = a
    assert out.flags.c_contiguous and out.ctypes.data % 16
    return out


@pytest.mark.parametrize("op, variant, shape", PACK_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_packs(dtype, op, variant, shape):
    """The packed path against the generic path (both schedules, a full and a 2-block grid);
    unaligned x and dy take single elements instead, with bit-identical results."""
    mods = (emu("inorder", rows_max=16), emu("shuffle", max_blocks=2, rows_max=16))
    assert all(_elementwise_vec(op, variant, shape, dtype, mod) for mod in mods)
    for mod in mods:
        got = check(mod, op, variant, activations.gelu, shape, dtype, seed=5)
        x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, seed=5)
        f, args, kwargs = call(op, variant, activations.gelu, _unaligned(x), scale, bias, rm, rv)
        for a, b in zip(run_emulated(mod, f, args, kwargs, _unaligned(dy)), got):
            np.testing.assert_array_equal(a, b, err_msg=f"{op} {variant} {shape}")


def test_pack_choice():
    """Packs where every element of a pack has the pack's group and affine index (or the
    next affine indices: layernorm), whatever the dtype's pack width; single elements
    elsewhere."""
    mod = emu(rows_max=16)
    for op, variant, shape, packed in [
        ("batchnorm", "train", (2, 3, 49), ()),  # 7x7 pixels
        ("batchnorm", "train", (2, 3, 4), (np.float32, np.float64)),
        ("batchnorm", "train", (2, 3, 6), (np.float64,)),
        ("batchnorm", "train", (64, 8), ()),  # (N, C): a channel per element
        ("groupnorm", 2, (2, 4, 2), (np.float64,)),  # groups of 4 elements, 2 per channel
        ("groupnorm", 2, (2, 4, 4), (np.float32, np.float64)),
        ("layernorm", "default", (3, 4, 5), (np.float32, np.float64)),  # rows of 20
        ("layernorm", "default", (3, 3, 7), ()),
    ]:
        for dtype in DTYPES:
            assert _elementwise_vec(op, variant, shape, dtype, mod) == (dtype in packed), (op, shape, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_give_identical_results(layout):
    """F-order, strided, negative-stride and read-only inputs: the launch code copies them
    once to C order; results bit-identical to C-contiguous inputs."""
    mod = emu("shuffle")
    for op, variant, shape in [("batchnorm", "train", (3, 2, 5)), ("groupnorm", 2, (2, 4, 3)),
                               ("layernorm", (0, 2), (3, 4, 5))]:
        x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, np.float32, seed=6)
        want = run_emulated(mod, *call(op, variant, activations.gelu, x, scale, bias, rm, rv), dy)
        laid = [with_layout(a, layout) for a in (x, scale, bias, rm, rv, dy)]
        got = run_emulated(mod, *call(op, variant, activations.gelu, *laid[:5]), laid[5])
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_scale_or_bias_alone(dtype):
    mod = emu("shuffle")
    for op, variant, shape in [("batchnorm", "infer", (3, 2, 5)), ("instancenorm", "train", (2, 3, 4)),
                               ("groupnorm", 2, (2, 4, 3)), ("layernorm", "default", (3, 4, 5))]:
        x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, seed=7)
        for sc, bi in ((scale, None), (None, bias)):
            f, args, kwargs = call(op, variant, activations.gelu, x, sc, bi, rm, rv)
            assert_close(run_emulated(mod, f, args, kwargs, dy), reference(f, args, kwargs, dy), dtype, op)


def test_declines_what_it_cannot_run():
    """User activations, empty arrays and layernorm scale varying along a kept axis run on
    the generic path (``supports`` is false)."""
    x = np.ones((2, 3, 4), np.float32)
    base = dict(x=x, scale=None, bias=None, running_mean=None, running_var=None, training=True, momentum=0.1,
                epsilon=EPS)
    ok = _normalization.SUPPORTS["batchnorm"]
    assert ok(act=activations.relu, **base)
    assert not ok(act=activations.get(lambda z: 2 * z), **base)
    assert not ok(act=activations.relu, **dict(base, x=np.ones((0, 3, 4), np.float32)))
    assert not ok(act=activations.relu, **dict(base, x=np.ones((2, 3, 4), np.int32)))
    ln = _normalization.SUPPORTS["layernorm"]
    assert ln(act=activations.relu, x=x, scale=np.ones((3, 4), np.float32), bias=None, axes=(1, 2), epsilon=EPS)
    assert not ln(act=activations.relu, x=x, scale=np.ones((2, 1, 4), np.float32), bias=None, axes=(2,), epsilon=EPS)


@pytest.mark.parametrize("sanitizer", list(sanitized.RUNTIMES))
def test_under_sanitizer(sanitizer):
    """The kernel comparisons once more, built under the sanitizer (every case in one schedule
    and dtype, the two-stage cases, one-element groups, layernorm's rows kernels, and the
    kernels whose blocks loop: a race between two iterations shows only there)."""
    sanitized.run_tests(sanitizer, "test_emu_normalization.py",
                        "(matches_generic and inorder and float32) or (two_stage and float64) or one_element"
                        " or (rows_kernels and inorder and float32) or (kernels_stride and float32)")
