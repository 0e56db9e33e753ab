"""GPU dense, batched_matmul and conv (and the 16-byte vector paths of the bias+activation
epilogue) on the CPU: the launch code of luxlib/cuda/_{dense,matmul,conv}.py with the
emulated kernels (tests/cuda/emu), the products by NumPy's matmul, against the generic
path, forward and every gradient.

References run the generic path on the inputs cast to float64; a result passes when
``max |got - ref| <= TOL[dtype] * (1 + max |ref|)`` per array. float16 uses smooth
activations only (a pre-activation rounded across 0 would flip relu's derivative).
"""

import warnings

import emu_blas
import emu_module
import numpy as np
import pytest
import sanitized

import luxlib
from luxlib import _dispatch, _validation, activations
from luxlib.cuda import _bias_activation, _conv, _dense, _matmul


DTYPES = [np.float16, np.float32, np.float64]
TOL = {np.float16: 1e-2, np.float32: 2e-5, np.float64: 1e-12}
SCHEDULES = ["inorder", "shuffle"]
LEAKY = activations.leakyrelu.with_params(a=0.2)
SMOOTH_ACTS = [activations.identity, activations.gelu, activations.sigmoid, activations.tanh]
ACTS = SMOOTH_ACTS + [activations.relu, LEAKY]

#: the emulated cuBLAS of every product here
BLAS = emu_blas.EmuBLAS()


def emu(family, schedule="inorder", max_blocks=None):
    return emu_module.shared(family, schedule, 99, max_blocks)


def acts_for(dtype):
    return SMOOTH_ACTS if dtype == np.float16 else ACTS


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def reference(f, args, dy):
    """The generic path on float64 copies of the array arguments: ``(y, gradients)``."""
    up = tuple(a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args)
    with luxlib.backend("generic"), np.errstate(all="ignore"):
        y, pullback = luxlib.vjp(f, *up)
        return y, pullback(dy.astype(np.float64))


def assert_close(got, want, dtype, what):
    assert got is not None, what
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == dtype, f"{what}: dtype {got.dtype}"
    if want.size == 0:
        return
    err = np.max(np.abs(got.astype(np.float64) - want))
    bound = TOL[dtype] * (1 + np.max(np.abs(want)))
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def check(what, dtype, got_y, grads, names, ref, first=1):
    """``names``: the differentiable arguments, positional from index ``first`` (after act)."""
    y_ref, g_ref = ref
    assert_close(got_y, y_ref, dtype, what + " y")
    for i, name in enumerate(names, start=first):
        if g_ref[i] is None:
            assert grads[name] is None, f"{what} d{name}"
        else:
            assert_close(grads[name], g_ref[i], dtype, f"{what} d{name}")


# ---- dense -----------------------------------------------------------------------

# (x shape, out features): a batch, one sample (1-D x), single elements, an empty batch,
# odd sizes around the 32x8 blocks of the row-reduction kernel
DENSE_CASES = [((3, 7), 5), ((7,), 5), ((1, 1), 1), ((0, 4), 3), ((9, 33), 17), ((2, 5), 40)]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", DENSE_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dense_matches_generic(dtype, case, schedule):
    x_shape, out = case
    mod = emu("bias_activation", schedule)
    rng = np.random.default_rng(len(x_shape) * 100 + out)
    w, x, b = randn(rng, (out, x_shape[-1]), dtype), randn(rng, x_shape, dtype), randn(rng, (out,), dtype)
    dy = randn(rng, x_shape[:-1] + (out,), dtype)
    for act in acts_for(dtype):
        for bias in (b, None):
            what = f"dense {act!r} {dtype.__name__} {x_shape}->{out} bias={bias is not None}"
            ref = reference(luxlib.fused_dense_bias_activation, (act, w, x, bias), dy)
            with np.errstate(all="ignore"):
                y_fwd = _dense.forward(mod, BLAS, act, w, x, bias)
                y, pullback = _dense.vjp(mod, BLAS, act, w, x, bias)
                grads = pullback(dy)
            np.testing.assert_array_equal(y_fwd, y)
            check(what, dtype, y, grads, ("weight", "x", "bias"), ref)


def test_dense_non_contiguous_inputs_are_not_modified():
    mod = emu("bias_activation")
    rng = np.random.default_rng(5)
    w = randn(rng, (6, 5), np.float32).T  # (5, 6): Fortran-ordered weight
    x = randn(rng, (8, 6), np.float32)[::2]  # strided rows
    b = randn(rng, (10,), np.float32)[::2]
    dy = randn(rng, (4, 5), np.float32)
    keep = [a.copy() for a in (w, x, b, dy)]
    y, pullback = _dense.vjp(mod, BLAS, activations.gelu, w, x, b)
    grads = pullback(dy)
    check("dense strided", np.float32, y, grads, ("weight", "x", "bias"),
          reference(luxlib.fused_dense_bias_activation, (activations.gelu, w, x, b), dy))
    for a, k in zip((w, x, b, dy), keep):
        np.testing.assert_array_equal(a, k)


# ---- batched_matmul -----------------------------------------------------------------

BMM_CASES = [
    ((2, 3, 4), (2, 4, 5)),
    ((1, 3, 4), (3, 4, 5)),  # x broadcast
    ((3, 3, 4), (1, 4, 5)),  # y broadcast: one folded gemm
    ((1, 1, 1), (1, 1, 1)),
    ((1, 2, 3), (0, 3, 2)),  # empty batch against a broadcast one
    ((0, 2, 3), (1, 3, 2)),
    ((2, 5, 0), (2, 0, 3)),  # K = 0
    ((4, 1, 7), (1, 7, 1)),
]


@pytest.mark.parametrize("case", BMM_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_batched_matmul_matches_generic(dtype, case):
    rng = np.random.default_rng(sum(case[0]) + 7 * sum(case[1]))
    x, y = randn(rng, case[0], dtype), randn(rng, case[1], dtype)
    batch = 0 if 0 in (x.shape[0], y.shape[0]) else max(x.shape[0], y.shape[0])
    dz = randn(rng, (batch, x.shape[1], y.shape[2]), dtype)
    ref = reference(luxlib.batched_matmul, (x, y), dz)
    z, pullback = _matmul.vjp(BLAS, x, y)
    np.testing.assert_array_equal(_matmul.forward(BLAS, x, y), z)
    check(f"bmm {dtype.__name__} {case}", dtype, z, pullback(dz), ("x", "y"), ref, first=0)


def test_batched_matmul_transposed_views():
    rng = np.random.default_rng(2)
    x = randn(rng, (3, 4, 2), np.float64).transpose(0, 2, 1)  # (3, 2, 4), not C-contiguous
    y = randn(rng, (1, 5, 4), np.float64).transpose(0, 2, 1)  # (1, 4, 5), broadcast
    dz = randn(rng, (3, 2, 5), np.float64)
    z, pullback = _matmul.vjp(BLAS, x, y)
    check("bmm views", np.float64, z, pullback(dz), ("x", "y"), reference(luxlib.batched_matmul, (x, y), dz),
          first=0)


# ---- conv --------------------------------------------------------------------------

# (x shape, weight shape, ConvDims options): every padding form, stride, dilation,
# groups (depthwise too; fewer samples than groups: a gemm per sample), flipped kernels, 1x1
# kernels (with and without the direct path)
CONV_CASES = [
    ((2, 3, 7), (4, 3, 3), dict(stride=2, padding=1)),
    ((1, 2, 9), (3, 2, 2), dict(padding="same", dilation=2, cross_correlation=False)),
    ((2, 3, 6), (3, 1, 3), dict(padding=((2, 0),), groups=3)),
    ((1, 2, 5), (2, 2, 5), dict(padding="valid")),
    ((2, 4, 5, 6), (6, 2, 3, 2), dict(stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2,
                                      cross_correlation=False)),
    ((3, 4, 3, 3), (5, 4, 1, 1), {}),
    ((1, 3, 5, 4), (2, 3, 1, 1), dict(stride=2)),
    ((1, 2, 5, 5), (3, 2, 3, 3), dict(stride=2, padding="same")),
    ((1, 2, 4, 4), (2, 2, 2, 3), dict(padding=(1, (0, 2)), dilation=(2, 1))),
    ((1, 2, 3, 4, 3), (2, 2, 2, 2, 2), dict(padding=1, stride=(1, 2, 1), cross_correlation=False)),
    ((2, 2, 3, 3, 4), (4, 1, 1, 2, 3), dict(padding="same", groups=2, dilation=(1, 2, 1))),
    ((1, 6, 7), (6, 2, 3), dict(padding=1, groups=3)),
    ((1, 4, 3, 3), (6, 2, 1, 1), dict(groups=2)),
]


def _conv_case(case, dtype, seed):
    x_shape, w_shape, options = case
    rng = np.random.default_rng(seed)
    cdims = luxlib.ConvDims(x_shape, w_shape, **options)
    x, w, b = randn(rng, x_shape, dtype), randn(rng, w_shape, dtype), randn(rng, (w_shape[0],), dtype)
    return x, w, b, randn(rng, cdims.output_shape, dtype), cdims


def check_conv(mods, act, x, w, bias, dy, cdims):
    what = f"conv {act!r} {x.dtype} {x.shape} {w.shape} {cdims} bias={bias is not None}"
    ref = reference(luxlib.fused_conv_bias_activation, (act, w, x, bias, cdims), dy)
    with np.errstate(all="ignore"):
        y_fwd = _conv.forward(*mods, BLAS, act, w, x, bias, cdims)
        y, pullback = _conv.vjp(*mods, BLAS, act, w, x, bias, cdims)
        grads = pullback(dy)
    np.testing.assert_array_equal(y_fwd, y)
    check(what, x.dtype.type, y, grads, ("weight", "x", "bias"), ref)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", CONV_CASES, ids=str)
def test_conv_matches_generic(case, schedule):
    mods = emu("conv", schedule), emu("bias_activation", schedule)
    x, w, b, dy, cdims = _conv_case(case, np.float64, seed=len(CONV_CASES[0]) + sum(case[0]))
    for act in (activations.identity, activations.relu, activations.gelu, activations.sigmoid):
        for bias in (b, None):
            check_conv(mods, act, x, w, bias, dy, cdims)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CONV_CASES[::2], ids=str)
def test_conv_dtypes(dtype, case):
    mods = emu("conv"), emu("bias_activation")
    x, w, b, dy, cdims = _conv_case(case, dtype, seed=3)
    for act in (activations.identity, activations.tanh):
        check_conv(mods, act, x, w, b, dy, cdims)


def test_conv_workspace_tiles_the_batch(monkeypatch):
    """A workspace budget below one sample: one sample per tile, results unchanged."""
    case = ((3, 2, 5, 5), (4, 2, 3, 3), dict(padding=1, stride=(1, 2)))
    x, w, b, dy, cdims = _conv_case(case, np.float32, seed=4)
    monkeypatch.setattr(_conv, "WORKSPACE_BYTES", 1)
    assert _conv._Plan(emu("conv"), BLAS, w, x, cdims).nb == 1
    check_conv((emu("conv"), emu("bias_activation")), activations.gelu, x, w, b, dy, cdims)
    monkeypatch.setattr(_conv, "WORKSPACE_BYTES", 2 * 4 * (2 * 2 * 9 * 15 + 4 * 15))  # two samples
    assert _conv._Plan(emu("conv"), BLAS, w, x, cdims).nb == 2
    check_conv((emu("conv"), emu("bias_activation")), activations.relu, x, w, None, dy, cdims)


def test_conv_layout_per_batch_size():
    """One ConvDims at several batch sizes: the geometry cached for one batch size is not
    used for another (the batch, the output shape and the tiling differ)."""
    case = ((3, 2, 5, 5), (4, 2, 3, 3), dict(padding=1, stride=(1, 2)))
    x, w, b, dy, cdims = _conv_case(case, np.float64, seed=21)
    mods = emu("conv"), emu("bias_activation")
    for n in (3, 1, 2, 3):
        check_conv(mods, activations.gelu, x[:n], w, b, dy[:n], cdims)


def test_conv_grid_stride():
    """Grids capped at 2 blocks: the grid-stride loops of im2col and col2im cover the rest."""
    mods = emu("conv", "shuffle", max_blocks=2), emu("bias_activation", "shuffle", max_blocks=2)
    x, w, b, dy, cdims = _conv_case(((2, 3, 9, 8), (4, 3, 3, 3), dict(padding=1)), np.float32, seed=6)
    check_conv(mods, activations.gelu, x, w, b, dy, cdims)


def test_conv_non_contiguous_inputs_are_not_modified():
    mods = emu("conv"), emu("bias_activation")
    rng = np.random.default_rng(9)
    x = randn(rng, (2, 5, 6, 3), np.float32).transpose(0, 3, 1, 2)  # (2, 3, 5, 6), channels last
    w = randn(rng, (4, 3, 2, 4), np.float32)[:, :, :, ::2]  # strided taps
    b = randn(rng, (8,), np.float32)[::2]
    cdims = luxlib.ConvDims(x.shape, w.shape, padding=1, stride=(1, 2))
    dy = randn(rng, cdims.output_shape, np.float32)
    keep = [a.copy() for a in (x, w, b, dy)]
    check_conv(mods, activations.gelu, x, w, b, dy, cdims)
    for a, k in zip((x, w, b, dy), keep):
        np.testing.assert_array_equal(a, k)


def test_conv_cdims_of_another_batch_size():
    """ConvDims fixes everything but the batch size (NNlib's rule): x's batch counts."""
    x, w, b, _, _ = _conv_case(((3, 2, 6), (4, 2, 3), {}), np.float64, seed=10)
    cdims = luxlib.ConvDims((7, 2, 6), w.shape, padding=((1, 2),), stride=2)
    dy = randn(np.random.default_rng(1), (3,) + cdims.output_shape[1:], np.float64)
    check_conv((emu("conv"), emu("bias_activation")), activations.relu, x, w, b, dy, cdims)


def test_conv_supports_declines_empty():
    x, w, b, _, cdims = _conv_case(((1, 2, 5), (3, 2, 3), {}), np.float32, seed=0)
    assert _conv.supports(activations.relu, w, x, b, cdims)
    assert not _conv.supports(activations.relu, w, x[:0], b, cdims)
    assert not _conv.supports(activations.relu, w, x, b.astype(np.float64), cdims)
    # per-sample sizes from TILE_LIMIT on (32-bit indexing within a tile) run generic
    half = _conv.TILE_LIMIT // 2
    for w_shape, groups, length in (((3, 2, 1), 1, half), ((4, 1, 1), 2, half // 2)):  # 2 channels; depthwise: 4 out
        w1 = np.ones(w_shape, np.float32)
        for extra, ok in ((-1, True), (0, False)):
            big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, 2, length + extra), (0, 0, 0))
            cdims = luxlib.ConvDims(big.shape, w1.shape, groups=groups)
            assert _conv.supports(activations.relu, w1, big, b[:1].repeat(w_shape[0]), cdims) == ok


# ---- depthwise: direct kernels -------------------------------------------------------

# (x shape, weight shape, ConvDims options), groups == C: multiplier 1 and 2, 1-D/2-D/3-D,
# 1x1 and 1-wide images, odd sizes, stride, dilation, every padding form, flipped kernels;
# the forward's unrolled kernel sizes (1-D 3, 2-D 3x3 and 5x5, 3-D 1x3x3: the first three and
# the last three cases) and the general loops (the others)
DEPTHWISE_CASES = [
    ((2, 3, 7), (6, 1, 3), dict(stride=2, padding=1, groups=3)),
    ((1, 2, 1), (2, 1, 3), dict(padding=1, groups=2)),
    ((2, 3, 5, 6), (3, 1, 3, 3), dict(padding="same", dilation=2, groups=3, cross_correlation=False)),
    ((1, 4, 1, 1), (8, 1, 1, 1), dict(groups=4)),
    ((2, 2, 7, 5), (4, 1, 2, 3), dict(stride=2, padding=((1, 0), (2, 1)), groups=2)),
    ((3, 3, 9, 4), (3, 1, 5, 1), dict(padding="valid", groups=3)),
    ((1, 2, 3, 4, 5), (4, 1, 2, 2, 3), dict(padding=1, stride=(1, 2, 1), dilation=(2, 1, 1), groups=2,
                                            cross_correlation=False)),
    ((2, 2, 6, 5), (4, 1, 3, 3), dict(stride=(2, 1), padding=1, groups=2)),
    ((1, 2, 3, 4, 5), (2, 1, 1, 3, 3), dict(padding=1, stride=(2, 1, 1), groups=2, cross_correlation=False)),
    ((1, 2, 7, 6), (2, 1, 5, 5), dict(padding=((2, 1), (3, 2)), groups=2)),
    # 288 weights: the weight gradient's finalize has two blocks
    ((1, 32, 3, 3), (32, 1, 3, 3), dict(padding=1, groups=32)),
]


def check_depthwise(mods, act, x, w, bias, dy, cdims):
    assert isinstance(_conv._plan(mods[0], BLAS, w, x, cdims), _conv._Depthwise)
    check_conv(mods, act, x, w, bias, dy, cdims)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=str)
def test_depthwise_conv_matches_generic(case, schedule):
    mods = emu("conv", schedule), emu("bias_activation", schedule)
    x, w, b, dy, cdims = _conv_case(case, np.float64, seed=sum(case[0]))
    for act in (activations.identity, activations.relu, activations.gelu):
        for bias in (b, None):
            check_depthwise(mods, act, x, w, bias, dy, cdims)


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=str)
def test_depthwise_conv_dtypes(dtype, case):
    mods = emu("conv"), emu("bias_activation")
    x, w, b, dy, cdims = _conv_case(case, dtype, seed=5)
    check_depthwise(mods, activations.tanh, x, w, b, dy, cdims)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_depthwise_epilogue_is_the_bias_activation_kernels(dtype):
    """The depthwise forward applies bias and activation itself, rounding as the separate
    epilogue kernel (bias_act_forward) does on a stored convolution: bit for bit."""
    mods = emu("conv"), emu("bias_activation")
    x, w, b, _, cdims = _conv_case(DEPTHWISE_CASES[2], dtype, seed=3)
    plan = _conv._plan(mods[0], BLAS, w, x, cdims)
    z = plan.activate(mods[1], activations.identity, None, keep_z=False)[0]
    for act in acts_for(dtype):
        for bias in (b, None):
            y, kept = plan.activate(mods[1], act, bias, keep_z=True)
            np.testing.assert_array_equal(kept, z)
            np.testing.assert_array_equal(y, _bias_activation.forward(mods[1], act, z, bias))
            y_alone, none = plan.activate(mods[1], act, bias, keep_z=False)
            np.testing.assert_array_equal(y_alone, y)
            assert none is None


def test_depthwise_only_for_groups_equal_to_channels():
    mod = emu("conv")
    for x_shape, w_shape, groups, want in (((1, 4, 5), (4, 1, 3), 4, True), ((1, 4, 5), (8, 2, 3), 2, False),
                                           ((1, 1, 5), (3, 1, 3), 1, False)):
        x, w = np.ones(x_shape, np.float32), np.ones(w_shape, np.float32)
        plan = _conv._plan(mod, BLAS, w, x, luxlib.ConvDims(x_shape, w_shape, groups=groups))
        assert isinstance(plan, _conv._Depthwise) == want, (x_shape, w_shape)


# a unit of dW per (channel, tap) (3x2 kernel), and per channel for all taps (3x3)
TWO_STAGE_CASES = [((3, 2, 5, 4), (4, 1, 3, 2), dict(padding=1, stride=(2, 1), groups=2)),
                   ((3, 2, 5, 4), (4, 1, 3, 3), dict(padding=1, stride=(2, 1), groups=2))]


@pytest.mark.parametrize("case", TWO_STAGE_CASES, ids=str)
def test_depthwise_weight_gradient_two_stage(case, monkeypatch):
    """dW split over several blocks per unit and over batch tiles (partials of every split
    and tile summed by dw_conv_dw_finalize), uneven and empty last splits, grids capped at 2
    blocks: matches the generic path, and the schedules agree bit for bit (no atomics: the
    order of the sums is fixed)."""
    x, w, b, dy, cdims = _conv_case(case, np.float32, seed=12)
    per_sample = _conv._layout(cdims, x.shape[0], x.dtype.itemsize, True).per_sample  # 4 channels x 15 positions
    monkeypatch.setattr(_conv, "DW_MIN_SPLIT", 1)
    # (DW_TARGET_BLOCKS, samples per tile), for the 3x2 kernel's 24 units: 2 splits of 45
    # positions; 5 of 15 (3 tiles); 9 splits of 30 positions (2 tiles), chunk 4: the last
    # split is empty (the 3x3 kernel's 4 units: 10, 25 and 30 splits)
    for target, nb in ((40, 3), (100, 1), (200, 2)):
        monkeypatch.setattr(_conv, "DW_TARGET_BLOCKS", target)
        monkeypatch.setattr(_conv, "TILE_LIMIT", nb * per_sample + 1)
        assert _conv._plan(emu("conv"), BLAS, w, x, cdims).nb == nb
        results = []
        for schedule in SCHEDULES:
            mods = emu("conv", schedule, max_blocks=2), emu("bias_activation", schedule)
            check_depthwise(mods, activations.gelu, x, w, b, dy, cdims)
            _, pullback = _conv.vjp(*mods, BLAS, activations.gelu, w, x, b, cdims)
            results.append(pullback(dy))
        for name in ("weight", "x", "bias"):
            np.testing.assert_array_equal(results[0][name], results[1][name], err_msg=name)


@pytest.mark.parametrize("case", [c for c in DEPTHWISE_CASES if _conv._as_3d(c[1][2:], 1) in _conv.DW_ALL_TAPS],
                         ids=str)
def test_depthwise_weight_gradient_all_taps(case, monkeypatch):
    """The weight gradient's units of all taps give each tap the sum that its own unit gives
    (one split, a tile per sample: the same partials), bit for bit, under both schedules."""
    x, w, b, dy, cdims = _conv_case(case, np.float32, seed=13)
    monkeypatch.setattr(_conv, "DW_TARGET_BLOCKS", 1)
    monkeypatch.setattr(_conv, "TILE_LIMIT", _conv._layout(cdims, x.shape[0], 4, True).per_sample + 1)
    for schedule in SCHEDULES:
        mods = emu("conv", schedule, max_blocks=2), emu("bias_activation", schedule)
        assert _conv._plan(mods[0], BLAS, w, x, cdims).all_taps
        got = [_conv.vjp(*mods, BLAS, activations.relu, w, x, b, cdims)[1](dy)["weight"]]
        monkeypatch.setattr(_conv, "DW_ALL_TAPS", frozenset())
        _conv._layout.cache_clear()  # the layouts cache whether a kernel takes every tap
        assert not _conv._plan(mods[0], BLAS, w, x, cdims).all_taps
        got.append(_conv.vjp(*mods, BLAS, activations.relu, w, x, b, cdims)[1](dy)["weight"])
        monkeypatch.undo()
        _conv._layout.cache_clear()
        monkeypatch.setattr(_conv, "DW_TARGET_BLOCKS", 1)
        monkeypatch.setattr(_conv, "TILE_LIMIT", _conv._layout(cdims, x.shape[0], 4, True).per_sample + 1)
        np.testing.assert_array_equal(got[0], got[1])


# ---- through the public functions and the registry ------------------------------------


@pytest.fixture
def gpu_dispatch(monkeypatch):
    """NumPy arrays dispatched to the registered GPU implementations, whose kernel modules
    are the emulated ones."""
    monkeypatch.setattr(_dispatch, "_kind", lambda arrays: "gpu")
    monkeypatch.setattr(_dispatch, "_GPU_RUN", [_dispatch._run_here])  # NumPy arrays are on no GPU
    stand_ins = {"blas": BLAS, "cudnn": None}  # no cuDNN: the emulated kernels run the convolutions
    monkeypatch.setattr(luxlib.cuda, "_mod",
                        lambda family: stand_ins[family] if family in stand_ins else emu(family, "shuffle"))


_CONV_DIMS = luxlib.ConvDims((2, 2, 5, 4), (4, 2, 3, 2), padding="same")
#: op -> (arguments from a random-array maker, differentiable arguments, index of the first)
PUBLIC_CALLS = {
    "fused_dense_bias_activation": (lambda r: ("gelu", r((5, 4)), r((4,)), r((5,))), ("weight", "x", "bias"), 1),
    "batched_matmul": (lambda r: (r((1, 2, 3)), r((4, 3, 5))), ("x", "y"), 0),
    "fused_conv_bias_activation": (
        lambda r: ("relu", r(_CONV_DIMS.w_shape), r(_CONV_DIMS.x_shape), r((4,)), _CONV_DIMS),
        ("weight", "x", "bias"),
        1,
    ),
}


@pytest.mark.parametrize("op", PUBLIC_CALLS)
def test_public_functions_run_the_gpu_implementations(gpu_dispatch, op):
    make, names, first = PUBLIC_CALLS[op]
    rng = np.random.default_rng(11)
    args = make(lambda shape: randn(rng, shape, np.float32))
    f = getattr(luxlib, op)
    with _dispatch.trace() as record:
        y, pullback = luxlib.vjp(f, *args)
    dy = randn(rng, y.shape, np.float32)
    grads = pullback(dy)
    assert record == [(op, "gpu")]
    check(op, np.float32, y, dict(zip(names, grads[first:])), names, reference(f, args, dy), first=first)
    for name, a, g in zip(names, args[first:], grads[first:]):
        assert g.shape == a.shape, name


# ---- 16-byte vector paths of the epilogue ---------------------------------------------


class _Offsets:
    """Stand-in for ``emu_module.device_offset``: the launch buffers of array arguments start
    ``offsets[i]`` bytes past an alignment boundary (cycled over the buffers), as views into
    bigger allocations may on a GPU, whatever the arrays' own offsets."""

    def __init__(self, offsets):
        self.offsets, self.count = offsets, 0

    def __call__(self, a):
        offset = self.offsets[self.count % len(self.offsets)]
        self.count += 1
        return offset


# sizes around a vector (4 floats, 2 doubles, 8 halves): head, body and tail; (N, C) with
# the channel stepping inside a vector; inner runs that are not a multiple of the vector
VECTOR_SHAPES = [(1,), (3,), (9,), (17,), (40,), (3, 17), (2, 5, 3), (2, 3, 8)]


def _epilogue_run(mod, act, x, bias, dy):
    y = _bias_activation.forward(mod, act, x, bias)
    y2, pullback = _bias_activation.vjp(mod, act, x, bias)
    g = pullback(dy)
    np.testing.assert_array_equal(y, y2)
    return y, g["x"], g["bias"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_vector_paths_misaligned(dtype, monkeypatch):
    """Aligned buffers (vectors), equally misaligned ones (a scalar head, then vectors) and
    unequally misaligned ones (scalar everywhere) give bit-identical results, which match
    the generic path."""
    mod = emu("bias_activation", "shuffle")
    item = np.dtype(dtype).itemsize
    layouts = {"aligned": [0], "equal": [item], "equal+": [16 - item], "unequal": [0, item]}
    for shape in VECTOR_SHAPES:
        rng = np.random.default_rng(shape[-1])
        x, dy = randn(rng, shape, dtype), randn(rng, shape, dtype)
        b = randn(rng, (shape[0] if len(shape) == 1 else shape[1],), dtype)
        for act in (activations.gelu, activations.sigmoid):
            for bias in (b, None):
                results = {}
                for name, offsets in layouts.items():
                    monkeypatch.setattr(emu_module, "device_offset", _Offsets(offsets))
                    with np.errstate(all="ignore"):
                        results[name] = _epilogue_run(mod, act, x, bias, dy)
                monkeypatch.undo()
                for name, res in results.items():
                    for got, want in zip(res, results["aligned"]):
                        np.testing.assert_array_equal(got, want, err_msg=f"{name} {shape} {act!r}")
                y_ref, g_ref = reference(luxlib.bias_activation, (act, x, bias), dy)
                assert_close(results["aligned"][0], y_ref, dtype, f"{shape} {act!r} y")
                assert_close(results["aligned"][1], g_ref[1], dtype, f"{shape} {act!r} dx")


def test_offset_buffers_are_misaligned(monkeypatch):
    """The stand-in really moves the kernel's pointers (read back by a test kernel)."""
    src = 'template <typename T> __global__ void addr(const T* x, long long* out) { out[0] = (long long)x; }'
    mod = emu_module.EmuModule(source=src, exprs=["addr<float>"])
    out = np.zeros(1, np.int64)
    for offsets, want in (([0], 0), ([4], 4), ([12], 12)):
        monkeypatch.setattr(emu_module, "device_offset", _Offsets(offsets))
        mod.get_function("addr<float>")((1,), (1,), (np.ones(3, np.float32), out))
        assert out[0] % 16 == want


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_two_stage_bias_gradient(dtype, schedule, monkeypatch):
    """db split over several blocks per channel (rows of (N, C), elements of (N, C, S)),
    summed by bias_act_db_finalize (of two blocks for 300 channels); uneven and empty last
    splits included."""
    mod = emu("bias_activation", schedule)
    monkeypatch.setattr(_bias_activation, "DB_MIN_SPLIT_ROWS", 1)
    monkeypatch.setattr(_bias_activation, "DB_MIN_SPLIT_ELEMENTS", 1)
    for target, shape in ((8, (37, 5)), (3, (10, 40)), (16, (3, 4, 50)), (7, (2, 3, 5)), (9, (7, 1, 3)),
                          (20, (3, 300))):
        monkeypatch.setattr(_bias_activation, "DB_TARGET_BLOCKS", target)
        rng = np.random.default_rng(target)
        x, dy, b = randn(rng, shape, dtype), randn(rng, shape, dtype), randn(rng, (shape[1],), dtype)
        for act in (activations.gelu, activations.sigmoid):
            _, dx, db = _epilogue_run(mod, act, x, b, dy)
            _, g_ref = reference(luxlib.bias_activation, (act, x, b), dy)
            assert_close(dx, g_ref[1], dtype, f"{shape} {act!r} dx")
            assert_close(db, g_ref[2], dtype, f"{shape} {act!r} db")


def test_epilogue_in_place():
    mod = emu("bias_activation")
    rng = np.random.default_rng(8)
    z, b = randn(rng, (4, 6, 5), np.float32), randn(rng, (6,), np.float32)
    want = _bias_activation.forward(mod, activations.gelu, z, b)
    assert _bias_activation.forward(mod, activations.gelu, z, b, out=z) is z
    np.testing.assert_array_equal(z, want)


def test_vector_loads_in_ptx():
    """The 16-byte paths compile to vector loads and stores (float4, double2, 8 halves)."""
    pytest.importorskip("cuda.bindings")
    import luxlib_nvrtc as nc

    ptx = nc.ptx("bias_activation", "compute_80")
    for kernel in ("bias_act_forward", "act_forward", "act_backward"):
        for typ, width in (("f", ".v4.f32"), ("d", ".v2.f64"), ("6__half", ".v4.u32")):
            entry = f"_Z{len(kernel)}{kernel}I{typ}E"
            start = ptx.index(".entry " + entry)
            body = ptx[start:ptx.index("\n}", start)]
            assert "ld.global" in body and width in body.split("ld.global", 1)[1], (kernel, typ)
            assert "st.global" + width in body, (kernel, typ)


# ---- mixed dtypes on the GPU path warn ---------------------------------------------------


def test_mixed_dtypes_warn_for_gpu_arrays(monkeypatch):
    monkeypatch.setattr(_validation, "_is_cupy", lambda a: True)  # NumPy arrays posing as CuPy's
    w, x = np.ones((3, 4), np.float32), np.ones((2, 4), np.float64)
    with pytest.warns(UserWarning, match=r"promoted to float64") as record:
        y = luxlib.fused_dense_bias_activation("relu", w, x, None)
    assert y.dtype == np.float64
    assert record[0].filename == __file__  # points at the caller, not into luxlib
    with pytest.warns(UserWarning, match=r"float16.*float32"):
        luxlib.batched_matmul(np.ones((1, 2, 2), np.float16), np.ones((1, 2, 2), np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        luxlib.fused_dense_bias_activation("relu", w, x.astype(np.float32), None)  # one dtype: silent


def test_mixed_dtypes_do_not_warn_for_numpy():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = luxlib.fused_dense_bias_activation("relu", np.ones((3, 4), np.float32), np.ones((2, 4)), None)
    assert y.dtype == np.float64


# ---- the kernels once more under each sanitizer -----------------------------------------


@pytest.mark.parametrize("sanitizer", list(sanitized.RUNTIMES))
def test_dense_conv_under_sanitizer(sanitizer):
    sanitized.run_tests(sanitizer, "test_emu_dense_conv.py",
                        "(matches_generic and inorder and not 33 and not 40) or tiles or transposed"
                        " or two_stage and inorder or depthwise_weight or conv_grid_stride")
