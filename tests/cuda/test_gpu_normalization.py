"""On a real GPU (marked `gpu`; skipped without CuPy or a device): batchnorm, groupnorm,
instancenorm and layernorm on CuPy arrays through the public functions (dispatched to
``luxlib.cuda``) against the generic path on NumPy arrays in float64, with the cases and
tolerances of test_emu_normalization.py, plus shapes large enough for the default
two-stage reductions."""

import numpy as np
import pytest
from test_emu_normalization import (
    ACTS,
    CASES,
    DTYPES,
    PACK_CASES,
    assert_close,
    call,
    make_inputs,
    outputs,
    reference,
)

from luxlib import activations
from luxlib._dispatch import _REGISTRY, trace

OPS = ("batchnorm", "groupnorm", "instancenorm", "layernorm")

# (op, variant, shape): few units with long reductions (many chunks per unit), many
# short units; layernorm rows of 1024 and 768 (rows kernels; 8248 rows: blocks of 16 tiles,
# the last one shorter) and of 16448 and 1025 (general kernels)
LARGE = [
    ("batchnorm", "train", (32, 8, 64, 64)),
    ("batchnorm", "none", (4096, 64)),
    ("instancenorm", "train", (2, 4, 100003)),
    ("groupnorm", 4, (16, 64, 33, 33)),
    ("layernorm", "default", (512, 1024)),
    ("layernorm", (-1,), (8, 1031, 768)),
    ("layernorm", (0, 2), (64, 3, 257)),
    ("layernorm", (-1,), (300, 1025)),
]


def test_registered_for_gpu():
    for op in OPS:
        assert (op, "gpu") in _REGISTRY



def _check_on_gpu(cp, op, variant, act, shape, dtype, affine=True, seed=0):
    x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, affine, seed)
    f, args, kwargs = call(op, variant, act, x, scale, bias, rm, rv)
    want = reference(f, args, kwargs, dy)
    gargs = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    gkw = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with trace() as record:
        got, plain = outputs(f, gargs, gkw, cp.asarray(dy))
    assert record == [(op, "gpu")] * 2
    cp.testing.assert_array_equal(plain, got[0])
    assert_close([cp.asnumpy(g) for g in got], want, dtype, f"{op} {variant} {shape} {act!r} affine={affine}")


@pytest.mark.gpu
@pytest.mark.parametrize("op, variant, shape", CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_matches_generic_on_gpu(cp, dtype, op, variant, shape):
    for act in ACTS:
        _check_on_gpu(cp, op, variant, act, shape, dtype)
    if variant is not None:
        _check_on_gpu(cp, op, variant, activations.relu, shape, dtype, affine=False)


@pytest.mark.gpu
@pytest.mark.parametrize("op, variant, shape", LARGE, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_large_on_gpu(cp, dtype, op, variant, shape):
    for act in (activations.relu, activations.gelu):
        _check_on_gpu(cp, op, variant, act, shape, dtype, seed=1)


def _unaligned_on_gpu(cp, a):
    """``a`` on the GPU, C-contiguous at one element past a 16-byte boundary."""
    buf = cp.empty(a.size + 1, a.dtype)
    out = buf[1:].reshape(a.shape)
    out[...] = cp.asarray(a)
    assert out.flags.c_contiguous and out.data.ptr % 16
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("op, variant, shape", PACK_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_packs_on_gpu(cp, dtype, op, variant, shape):
    """The elementwise kernels' 16-byte packs against the generic path; unaligned x and dy
    (single elements; a misaligned pack access would fault) give bit-identical results."""
    x, scale, bias, rm, rv, dy = make_inputs(op, variant, shape, dtype, seed=5)
    f, args, kwargs = call(op, variant, activations.gelu, x, scale, bias, rm, rv)
    on_gpu = lambda a: cp.asarray(a) if isinstance(a, np.ndarray) else a
    results = []
    for place in (cp.asarray, lambda a: _unaligned_on_gpu(cp, a)):
        _, gargs, gkw = call(op, variant, activations.gelu, place(x), *map(on_gpu, (scale, bias, rm, rv)))
        with trace() as record:
            got, _ = outputs(f, gargs, gkw, place(dy))
        assert record == [(op, "gpu")] * 2
        results.append([cp.asnumpy(g) for g in got])
    assert_close(results[0], reference(f, args, kwargs, dy), dtype, f"{op} {variant} {shape}")
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_every_activation_on_gpu(cp, dtype):
    for act in activations.ACTIVATIONS.values():
        _check_on_gpu(cp, "batchnorm", "train", act, (2, 3, 7), dtype, seed=2)
        _check_on_gpu(cp, "layernorm", "default", act, (3, 2, 5), dtype, seed=2)
