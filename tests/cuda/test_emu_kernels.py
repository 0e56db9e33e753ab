"""The CUDA kernels run on the CPU (tests/cuda/emu) through the same launch code as on
a GPU, against the generic path: every activation, forward and backward (with the
bias-gradient reductions), dropout and alpha_dropout, on small and edge sizes
(1, block - 1, block, block + 1, odd shapes), under two thread schedules.

Tolerances of bias_activation: ``bias_activation_checks``. Dropout masks and
``dropout``'s outputs and gradients are bit-identical.
"""

import emu_module
import numpy as np
import pytest
from bias_activation_checks import check_bias_activation, make_inputs

import luxlib
from _helpers import ALL_ACTS
from luxlib import activations
from luxlib.cuda import _bias_activation, _dropout
from luxlib.cuda._modules import BLOCK, UNROLL

DTYPES = [np.float16, np.float32, np.float64]
SCHEDULES = ["inorder", "shuffle"]
ACTS = ALL_ACTS
# 1-D (the bias runs along the only axis), (N, C) (the row kernel), (N, C, ...) (one block
# per channel; inner sizes around the block of 256 threads)
SHAPES = [(1,), (255,), (257,), (1, 1), (3, 33), (2, 31), (2, 3, 5), (1, 2, 255), (2, 1, 256),
          (3, 2, 257), (2, 3, 4, 5)]


def emu(family, schedule="inorder", max_blocks=None, seed=1234):
    return emu_module.shared(family, schedule, seed, max_blocks)


def _launch(mod):
    """The launch code on the emulated module ``mod``: forward, vjp and pullback."""

    def run(act, x, bias, dy):
        with np.errstate(all="ignore"):
            y = _bias_activation.forward(mod, act, x, bias)
            y2, pullback = _bias_activation.vjp(mod, act, x, bias)
            return y, y2, pullback(dy)

    return run


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_bias_activation_matches_generic(dtype, shape, schedule):
    mod = emu("bias_activation", schedule)
    x, bias, dy = make_inputs(shape, dtype)
    for act in ACTS:
        check_bias_activation(_launch(mod), act, x, bias, dy)
    for act in (activations.relu, activations.gelu, activations.identity):
        check_bias_activation(_launch(mod), act, x, None, dy)


@pytest.mark.parametrize("shape", [(1,), (7, 3), (3, 2, 600), (3, 2, 1500)], ids=str)
def test_bias_activation_grid_stride(shape):
    """Grids capped below the work: every kernel's grid-stride loop covers the rest (the
    elementwise kernels' too from 9000 elements: one block covers 4096 a step)."""
    mod = emu("bias_activation", "shuffle", max_blocks=2)
    x, bias, dy = make_inputs(shape, np.float32, seed=3)
    for act in (activations.relu, activations.gelu):
        check_bias_activation(_launch(mod), act, x, bias, dy)
        check_bias_activation(_launch(mod), act, x, None, dy)


def _unrolled_size(dtype):
    """Elements that one block of the vector loop (``lx_elementwise``) covers in two steps of
    ``LX_UNROLL`` vectors per thread, then 300 single vectors, then a scalar tail of 3."""
    return 16 // np.dtype(dtype).itemsize * (2 * UNROLL * BLOCK + 300) + 3


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_bias_activation_unrolled_vector_loop(dtype):
    mod = emu("bias_activation", "shuffle", max_blocks=1)
    x, bias, dy = make_inputs((_unrolled_size(dtype),), dtype, seed=5)
    for act in (activations.relu, activations.gelu):
        check_bias_activation(_launch(mod), act, x, bias, dy)
        check_bias_activation(_launch(mod), act, x, None, dy)
        with np.errstate(all="ignore"):
            buf = x.copy()  # in place: y written over x
            y = _bias_activation.forward(mod, act, buf, bias, out=buf)
            np.testing.assert_array_equal(y, _bias_activation.forward(mod, act, x, bias))


class _Launches:
    """A kernel module that records the kernel and grid of every launch through it."""

    def __init__(self, mod):
        self.mod, self.launches = mod, []

    def __getattr__(self, name):  # the launch code's hooks (max_blocks)
        return getattr(self.mod, name)

    def get_function(self, name):
        kernel = self.mod.get_function(name)

        def launch(grid, block, args):
            self.launches.append((name.split("<")[0], grid))
            kernel(grid, block, args)

        return launch


def test_launch_plans_follow_grid_caps_and_split_thresholds(monkeypatch):
    """The launches are planned once per shape (cached); what else shapes them is part of
    the key or read at each call: the same shape through modules of other grid caps gets
    their grids, and lowered split thresholds give the two-stage bias gradient at once."""
    x, bias, dy = make_inputs((3, 4, 1000), np.float32, seed=11)
    for cap, blocks in ((None, 3), (2, 2), (1, 1), (None, 3)):
        mod = _Launches(emu("bias_activation", max_blocks=cap))
        _bias_activation.vjp(mod, activations.gelu, x, None)[1](dy)
        assert mod.launches == [("act_forward", (blocks,)), ("act_backward", (blocks,))], cap

    def db_kernels():
        mod = _Launches(emu("bias_activation"))
        g = _bias_activation.vjp(mod, activations.gelu, x, bias)[1](dy)
        check = _bias_activation.vjp(emu("bias_activation"), activations.gelu, x.astype(np.float64),
                                     bias.astype(np.float64))[1](dy.astype(np.float64))
        np.testing.assert_allclose(g["bias"], check["bias"], rtol=1e-5, atol=1e-4)
        return [(name, grid) for name, grid in mod.launches if name != "bias_act_forward"]

    assert db_kernels() == [("bias_act_backward_db", (4, 1))]  # 3000 elements a channel: one stage
    monkeypatch.setattr(_bias_activation, "DB_MIN_SPLIT_ELEMENTS", 1000)
    assert db_kernels() == [("bias_act_backward_db", (4, 3)), ("bias_act_db_finalize", (1,))]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_bias_activation_empty(dtype):
    mod = emu("bias_activation")
    x = np.zeros((0, 3, 2), dtype)
    y, pullback = _bias_activation.vjp(mod, activations.gelu, x, np.ones(3, dtype))
    g = pullback(np.zeros_like(x))
    assert y.shape == x.shape and g["x"].shape == x.shape
    np.testing.assert_array_equal(g["bias"], np.zeros(3, dtype))


# ---- dropout ---------------------------------------------------------------------

# sizes around one thread block of Philox blocks (256 threads x 4 elements)
DROP_SIZES = [1, 3, 4, 5, 255, 1023, 1024, 1025, 2049]
PS = [0.0, 0.1, 0.5, 1 - 2**-24, 1.0]
# masks that vary along one run of adjacent axes take multiply_channel (the first four; the
# last of them along none), the others CuPy's broadcasting (here NumPy's)
DIMS_CASES = [((3, 4, 5), 0), ((2, 3, 4, 5), (1, 2)), ((4, 6), -1), ((5, 1, 3), ()), ((3, 1, 5), (0, 1)),
              ((3, 4, 5), (0, 2)), ((2, 3, 4, 5), (1, 3))]


def _dropout_both(mod, x, p, dims=None, seed=7):
    kw = dict(dims=dims) if dims is not None else {}
    with luxlib.backend("generic"):
        (y_ref, m_ref, r_ref), pb_ref = luxlib.vjp(luxlib.dropout, np.random.default_rng(seed), x, p, True, **kw)
    shape = m_ref.shape
    invp = 1 / (1 - p) if p < 1 else np.inf
    (y, m, r), pb = _dropout.dropout_vjp(mod, np.random.default_rng(seed), x, p, True, invp, shape, None)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)
    return (y, m, r, pb(dy)["x"]), (y_ref, m_ref, r_ref, pb_ref(dy)[1])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dropout_bit_identical(dtype, schedule):
    mod = emu("dropout", schedule)
    for n in DROP_SIZES:
        x = np.random.default_rng(n).standard_normal((n,)).astype(dtype)
        for p in PS:
            (y, m, r, dx), (y_ref, m_ref, r_ref, dx_ref) = _dropout_both(mod, x, p)
            for a, b in ((y, y_ref), (m, m_ref), (dx, dx_ref)):
                assert a.dtype == b.dtype
                np.testing.assert_array_equal(a, b, err_msg=f"n={n} p={p}")
            assert r.bit_generator.state == r_ref.bit_generator.state


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", range(len(DIMS_CASES)), ids=lambda i: str(DIMS_CASES[i]))
def test_dropout_dims(case, dtype):
    """A mask along dims: y, the mask and dx bit for bit the generic path's; y and dx by
    multiply_channel where the mask varies along one run of adjacent axes."""
    shape, dims = DIMS_CASES[case]
    mod = _Launches(emu("dropout", "shuffle"))
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    (y, m, _, dx), (y_ref, m_ref, _, dx_ref) = _dropout_both(mod, x, 0.3, dims)
    for a, b in ((y, y_ref), (m, m_ref), (dx, dx_ref)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    products = [name for name, _ in mod.launches if name.startswith("multiply")]
    assert products == (["multiply_channel"] * 2 if case < 5 else [])


@pytest.mark.parametrize("shape, dims", [((3001,), None), ((3, 3001), 0)], ids=str)
def test_dropout_grid_stride(shape, dims):
    """Grids capped at 2 blocks, below the work (the mask's for 3001 elements; the products'
    for 9003, which take three blocks of 4096): the grid-stride loops cover the rest."""
    mod = _Launches(emu("dropout", "shuffle", max_blocks=2))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    (y, m, _, dx), (y_ref, m_ref, _, dx_ref) = _dropout_both(mod, x, 0.5, dims)
    for a, b in ((y, y_ref), (m, m_ref), (dx, dx_ref)):
        np.testing.assert_array_equal(a, b)
    if dims is not None:
        assert [g for name, g in mod.launches if name == "multiply_channel"] == [(2,), (2,)]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dropout_unrolled_vector_loop(dtype):
    """y = x * mask and dx = dy * mask through every part of the vector loop (one block)."""
    mod = emu("dropout", "shuffle", max_blocks=1)
    x = np.random.default_rng(0).standard_normal((_unrolled_size(dtype),)).astype(dtype)
    (y, m, _, dx), (y_ref, m_ref, _, dx_ref) = _dropout_both(mod, x, 0.3)
    for got, want in ((y, y_ref), (m, m_ref), (dx, dx_ref)):
        np.testing.assert_array_equal(got, want)
    # a mask along axis 1: multiply_channel's channel steps across the packs
    x = np.random.default_rng(1).standard_normal((2, 3, _unrolled_size(dtype) // 6 + 1)).astype(dtype)
    (y, m, _, dx), (y_ref, m_ref, _, dx_ref) = _dropout_both(mod, x, 0.3, dims=1)
    for got, want in ((y, y_ref), (m, m_ref), (dx, dx_ref)):
        np.testing.assert_array_equal(got, want)


def test_dropout_threshold_is_exact():
    """p = 0.1 is not a float32: the keep test must compare exactly (doc/dropout.md)."""
    mod = emu("dropout")
    x = np.ones(40000, np.float32)
    (_, m, _, _), (_, m_ref, _, _) = _dropout_both(mod, x, 0.1, seed=3)
    np.testing.assert_array_equal(m, m_ref)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_alpha_dropout_bit_identical(dtype, schedule):
    mod = emu("dropout", schedule)
    alpha = -1.7580993408473766
    for n in DROP_SIZES:
        x = np.random.default_rng(n).standard_normal((n,)).astype(dtype)
        dy = np.random.default_rng(n + 1).standard_normal((n,)).astype(dtype)
        for p in PS:
            A = 1 / np.sqrt((1 - p) * (1 + p * alpha**2)) if p < 1 else 0.0
            B = -A * alpha * p
            with luxlib.backend("generic"):
                (y_ref, r_ref), pb_ref = luxlib.vjp(luxlib.alpha_dropout, np.random.default_rng(5), x, p, True)
            y_plain, _ = _dropout.alpha_dropout_forward(mod, np.random.default_rng(5), x, p, True, alpha, A, B)
            (y, r), pb = _dropout.alpha_dropout_vjp(mod, np.random.default_rng(5), x, p, True, alpha, A, B)
            np.testing.assert_array_equal(y, y_ref, err_msg=f"n={n} p={p}")
            np.testing.assert_array_equal(y_plain, y_ref)
            np.testing.assert_array_equal(pb(dy)["x"], pb_ref(dy)[1])
            assert r.bit_generator.state == r_ref.bit_generator.state


def test_empty_dropout():
    mod = emu("dropout")
    x = np.zeros((0, 4), np.float32)
    (y, m, _), pb = _dropout.dropout_vjp(mod, np.random.default_rng(0), x, 0.5, True, 2.0, x.shape, None)
    assert y.shape == m.shape == x.shape and pb(x)["x"].shape == x.shape


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masks_identical_to_cython(dtype):
    """CPU vs GPU: the emulated CUDA kernel and the Cython kernel give the same mask."""
    from luxlib._kernels import IMPORT_ERROR

    if IMPORT_ERROR is not None:
        pytest.fail(f"Cython kernels not built: {IMPORT_ERROR}")
    mod = emu("dropout", "shuffle")
    for n, p in [(1, 0.5), (1025, 0.1), (4099, 0.9), (70001, 0.5)]:
        x = np.random.default_rng(n).standard_normal((n,)).astype(dtype)
        with luxlib._dispatch.trace() as record:
            y_c, m_c, _ = luxlib.dropout(np.random.default_rng(42), x, p, True)
        assert record == [("dropout", "looped")]
        (y, m, _), _ = _dropout.dropout_vjp(mod, np.random.default_rng(42), x, p, True, 1 / (1 - p), x.shape, None)
        np.testing.assert_array_equal(m, m_c)
        np.testing.assert_array_equal(y, y_c)
