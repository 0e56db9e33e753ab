"""On a real GPU (marked `gpu`; skipped without CuPy or a device): the registered CUDA
implementations on CuPy arrays against the generic path on NumPy arrays."""

import os
import subprocess
import sys

import numpy as np
import pytest
from bias_activation_checks import check_bias_activation, make_inputs

import luxlib
from _helpers import ALL_ACTS
from luxlib import activations
from luxlib._dispatch import _REGISTRY, trace

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_registered_for_gpu():
    for op in ("fast_activation", "fast_activation_", "bias_activation", "bias_activation_", "dropout",
               "alpha_dropout"):
        assert (op, "gpu") in _REGISTRY


def test_import_luxlib_cuda_imports_no_cupy():
    code = "import sys, luxlib.cuda; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1,), (257,), (3, 33), (2, 3, 257), (64, 128, 7, 7)], ids=str)
def test_bias_activation_on_gpu(cp, dtype, shape):
    x, bias, dy = make_inputs(shape, dtype)

    def run(act, x, bias, dy):
        with trace() as record:
            y = luxlib.bias_activation(act, cp.asarray(x), None if bias is None else cp.asarray(bias))
            y2, pb = luxlib.vjp(luxlib.bias_activation, act, cp.asarray(x), None if bias is None else cp.asarray(bias))
            g = pb(cp.asarray(dy))
        assert record == [("bias_activation", "gpu")] * 2
        return cp.asnumpy(y), cp.asnumpy(y2), {"x": cp.asnumpy(g[1]), "bias": None if g[2] is None else cp.asnumpy(g[2])}

    for act in ALL_ACTS:
        check_bias_activation(run, act, x, bias, dy)
    for act in (activations.relu, activations.gelu, activations.identity):
        check_bias_activation(run, act, x, None, dy)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dropout_masks_bit_identical_on_gpu(cp, dtype):
    for n, p in [(1, 0.5), (1025, 0.1), (1 << 20, 0.5)]:
        x = np.random.default_rng(n).standard_normal(n).astype(dtype)
        with luxlib.backend("generic"):
            y_ref, m_ref, _ = luxlib.dropout(np.random.default_rng(3), x, p, True)
            ya_ref, _ = luxlib.alpha_dropout(np.random.default_rng(3), x, p, True)
        with trace() as record:
            y, m, _ = luxlib.dropout(np.random.default_rng(3), cp.asarray(x), p, True)
            ya, _ = luxlib.alpha_dropout(np.random.default_rng(3), cp.asarray(x), p, True)
        assert record == [("dropout", "gpu"), ("alpha_dropout", "gpu")]
        np.testing.assert_array_equal(cp.asnumpy(m), m_ref)
        np.testing.assert_array_equal(cp.asnumpy(y), y_ref)
        np.testing.assert_array_equal(cp.asnumpy(ya), ya_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dropout_dims_bit_identical_on_gpu(cp, dtype):
    """A mask along dims: y, the mask and dx bit for bit the generic path's (the products by
    multiply_channel for the first two, by CuPy's broadcasting for the last)."""
    for shape, dims in [((64, 32, 33), 1), ((8, 16, 9, 9), (1, 2)), ((8, 16, 9, 9), (0, 2))]:
        rng = np.random.default_rng(len(shape))
        x, dy = (rng.standard_normal(shape).astype(dtype) for _ in range(2))
        with luxlib.backend("generic"):
            (y_ref, m_ref, _), pb = luxlib.vjp(luxlib.dropout, np.random.default_rng(3), x, 0.3, True, dims=dims)
            dx_ref = pb(dy)[1]
        with trace() as record:
            (y, m, _), pb = luxlib.vjp(luxlib.dropout, np.random.default_rng(3), cp.asarray(x), 0.3, True, dims=dims)
        assert record == [("dropout", "gpu")]
        for got, want in ((y, y_ref), (m, m_ref), (pb(cp.asarray(dy))[1], dx_ref)):
            np.testing.assert_array_equal(cp.asnumpy(got), want, err_msg=f"{shape} {dims}")


@pytest.mark.gpu
@pytest.mark.real_cupy
def test_dropout_with_a_cupy_generator_on_gpu(cp):
    x = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)
    rng = cp.random.default_rng(5)
    with trace() as record:
        y1, m1, r1 = luxlib.dropout(rng, cp.asarray(x), 0.4, True)
        _, m2, _ = luxlib.dropout(rng, cp.asarray(x), 0.4, True)
    assert record == [("dropout", "gpu")] * 2
    np.testing.assert_array_equal(cp.asnumpy(m1), cp.asnumpy(m2))  # the caller's rng is not advanced
    assert type(r1) is type(rng) and r1 is not rng
    _, m3, _ = luxlib.dropout(rng, x, 0.4, True)  # the same key on the CPU path
    np.testing.assert_array_equal(cp.asnumpy(m1), m3)
    np.testing.assert_array_equal(cp.asnumpy(y1), x * m3)
