"""On a real GPU (marked `gpu`; skipped without CuPy or a device): fused dense, batched
matmul and conv (on cuDNN, and on luxlib's kernels alone) on CuPy arrays, through the
public functions, against the generic path on NumPy arrays (cases and tolerances of
test_emu_dense_conv.py); the epilogue on misaligned views; the mixed-dtype warning."""

import numpy as np
import pytest
from test_emu_dense_conv import (
    BMM_CASES,
    CONV_CASES,
    DENSE_CASES,
    DEPTHWISE_CASES,
    DTYPES,
    acts_for,
    assert_close,
    reference,
)

import luxlib
from luxlib import activations
from luxlib._dispatch import _REGISTRY, trace
from luxlib.cuda import _cudnn


def test_registered_for_gpu():
    for op in ("fused_dense_bias_activation", "batched_matmul", "fused_conv_bias_activation"):
        assert (op, "gpu") in _REGISTRY



def _on_gpu(cp, op, f, args, dy, names, first=1):
    """``luxlib.vjp(f)`` on CuPy copies of ``args``: checks that the GPU implementation ran
    and compares the output and gradients with the generic float64 reference."""
    y_ref, g_ref = reference(f, args, dy)
    dev = tuple(cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    with trace() as record:
        y, pullback = luxlib.vjp(f, *dev)
        grads = pullback(cp.asarray(dy))
    assert record == [(op, "gpu")]
    dtype = dy.dtype.type
    assert_close(cp.asnumpy(y), y_ref, dtype, f"{op} y")
    for i, name in enumerate(names, start=first):
        if g_ref[i] is None:
            assert grads[i] is None
        else:
            assert_close(cp.asnumpy(grads[i]), g_ref[i], dtype, f"{op} d{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("case", DENSE_CASES + [((256, 1024), 512)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_dense_on_gpu(cp, dtype, case):
    x_shape, out = case
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((out, x_shape[-1])) / np.sqrt(max(1, x_shape[-1]))).astype(dtype)
    x, b = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(out).astype(dtype)
    dy = rng.standard_normal(x_shape[:-1] + (out,)).astype(dtype)
    for act in acts_for(dtype):
        for bias in (b, None):
            _on_gpu(cp, "fused_dense_bias_activation", luxlib.fused_dense_bias_activation, (act, w, x, bias), dy,
                    ("weight", "x", "bias"))


@pytest.mark.gpu
@pytest.mark.parametrize("case", BMM_CASES + [((1, 64, 96), (32, 96, 80)), ((32, 64, 96), (1, 96, 80))], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_batched_matmul_on_gpu(cp, dtype, case):
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal(case[0]).astype(dtype), rng.standard_normal(case[1]).astype(dtype)
    batch = 0 if 0 in (x.shape[0], y.shape[0]) else max(x.shape[0], y.shape[0])
    dz = rng.standard_normal((batch, x.shape[1], y.shape[2])).astype(dtype)
    _on_gpu(cp, "batched_matmul", luxlib.batched_matmul, (x, y), dz, ("x", "y"), first=0)


# the depthwise cases run the direct kernels (dw_conv_*); the last one is big enough that
# the depthwise weight gradient splits its reductions over several blocks
GPU_CONV_CASES = CONV_CASES + DEPTHWISE_CASES + [
    ((8, 16, 12, 12), (32, 16, 3, 3), dict(padding=1)),
    ((4, 32, 28, 28), (64, 1, 3, 3), dict(padding=1, stride=2, groups=32)),
]


@pytest.fixture(params=["cudnn", "kernels"])
def engine(request, monkeypatch, cp):
    """The convolutions on cuDNN where it takes them (its opt-in, ``LUXLIB_CUDNN=1``;
    skipped without cuDNN, and on the emulated GPU), or on luxlib's kernels alone."""
    monkeypatch.setattr(_cudnn, "_CUDNN", [None] if request.param == "kernels" else [])
    monkeypatch.setenv("LUXLIB_CUDNN", "1")
    if request.param == "cudnn" and _cudnn.get_cudnn() is None:
        pytest.skip("cuDNN 9 is not installed (or the GPU is emulated)")
    return request.param


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CONV_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_conv_on_gpu(cp, engine, dtype, case):
    x_shape, w_shape, options = case
    rng = np.random.default_rng(2)
    cdims = luxlib.ConvDims(x_shape, w_shape, **options)
    if engine == "cudnn" and all(lo == hi for lo, hi in cdims.padding) and not cdims.groups == x_shape[1] > 1:
        # cuDNN takes every such layout (a refusal would quietly test the kernels instead)
        assert _cudnn.get_cudnn().convolution(cdims, x_shape[0], np.dtype(dtype)) is not None
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(np.prod(w_shape[1:]))).astype(dtype)
    b, dy = rng.standard_normal(w_shape[0]).astype(dtype), rng.standard_normal(cdims.output_shape).astype(dtype)
    for act in (activations.identity, activations.gelu):
        for bias in (b, None):
            _on_gpu(cp, "fused_conv_bias_activation", luxlib.fused_conv_bias_activation, (act, w, x, bias, cdims),
                    dy, ("weight", "x", "bias"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_epilogue_misaligned_views_on_gpu(cp, dtype):
    """Views one element into bigger buffers: equally misaligned x and y (scalar head, then
    vectors) and unequally misaligned ones (scalar) equal the aligned result bit for bit."""
    from luxlib.cuda import _bias_activation, get_module

    mod = get_module("bias_activation")
    for shape in [(1,), (9,), (1000,), (3, 17), (2, 5, 3)]:
        rng = np.random.default_rng(3)
        x = cp.asarray(rng.standard_normal(shape).astype(dtype))
        b = cp.asarray(rng.standard_normal(shape[0] if len(shape) == 1 else shape[1]).astype(dtype))
        want = _bias_activation.forward(mod, activations.gelu, x, b)
        bx, by = cp.empty(x.size + 1, dtype), cp.empty(x.size + 1, dtype)
        xv, yv = bx[1:].reshape(shape), by[1:].reshape(shape)
        xv[...] = x
        for out in (yv, None):  # equally misaligned, then an aligned new y
            got = _bias_activation.forward(mod, activations.gelu, xv, b, out=out)
            np.testing.assert_array_equal(cp.asnumpy(got), cp.asnumpy(want))


@pytest.mark.gpu
def test_mixed_dtypes_warn_on_gpu(cp):
    w, x = cp.ones((3, 4), cp.float32), cp.ones((2, 4), cp.float64)
    with pytest.warns(UserWarning, match="promoted to float64"):
        y = luxlib.fused_dense_bias_activation("relu", w, x, None)
    assert y.dtype == cp.float64
