"""``luxlib.cuda._blas.CuBLAS`` itself, without a GPU: CuPy and its cuBLAS binding replaced
by stand-ins over NumPy memory.

The stand-in binding has the signatures of CuPy 14.2's ``cupy_backends.cuda.libs.cublas``
(``sgemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb,
strideB, beta, C, ldc, strideC, batchCount)``, ``gemmStridedBatchedEx`` with the types and
the compute type after each pointer) and does what they do: it reads ``alpha`` and
``beta`` from the host pointers, finds the arrays behind the device pointers and runs the
emulated cuBLAS (``emu_blas``). So the argument order, the pointer arithmetic (``.data.ptr``
of a view), the scalars' types and the dtype dispatch of ``CuBLAS`` are checked by results.
"""

import ctypes
import sys
import types

import emu_blas
from device_memory import Memory
import numpy as np
import pytest

from luxlib.cuda import _blas

HANDLE = 7
CUDA_R_16F = 2
COMPUTE_32F = 68
GEMM_DEFAULT = -1


def _binding(memory, calls):
    """The stand-in ``cupy_backends.cuda.libs.cublas``."""
    emu = emu_blas.EmuBLAS()

    def run(dtype, compute, handle, transa, transb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch):
        assert handle == HANDLE and transa in (0, 1) and transb in (0, 1)
        scalar = ctypes.c_double if compute == np.float64 else ctypes.c_float
        assert scalar.from_address(alpha).value == 1.0
        b = scalar.from_address(beta).value
        assert b in (0.0, 1.0)
        calls.append((np.dtype(dtype).name, b))
        emu.gemm_strided_batched(bool(transa), bool(transb), m, n, k, memory.at(A, dtype), lda, sa,
                                 memory.at(B, dtype), ldb, sb, b == 1.0, memory.at(C, dtype), ldc, sc, batch)

    def sgemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                            beta, C, ldc, strideC, batchCount):
        run(np.float32, np.float32, handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
            beta, C, ldc, strideC, batchCount)

    def dgemmStridedBatched(handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                            beta, C, ldc, strideC, batchCount):
        run(np.float64, np.float64, handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
            beta, C, ldc, strideC, batchCount)

    def gemmStridedBatchedEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb,
                             strideB, beta, C, Ctype, ldc, strideC, batchCount, computeType, algo):
        assert Atype == Btype == Ctype == CUDA_R_16F and computeType == COMPUTE_32F and algo == GEMM_DEFAULT
        run(np.float16, np.float32, handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
            beta, C, ldc, strideC, batchCount)

    return types.SimpleNamespace(
        CUBLAS_OP_N=0, CUBLAS_OP_T=1, CUBLAS_COMPUTE_32F=COMPUTE_32F, CUBLAS_GEMM_DEFAULT=GEMM_DEFAULT,
        sgemmStridedBatched=sgemmStridedBatched, dgemmStridedBatched=dgemmStridedBatched,
        gemmStridedBatchedEx=gemmStridedBatchedEx,
    )


@pytest.fixture
def device(monkeypatch):
    """``(memory, calls)`` with stand-ins for ``cupy`` and its cuBLAS binding installed."""
    memory, calls = Memory(), []
    cupy = types.ModuleType("cupy")
    cupy.empty = lambda shape, dtype: memory.new(np.empty(shape, dtype))
    cupy.ascontiguousarray = lambda a: memory.new(np.ascontiguousarray(a))
    cupy.matmul = lambda a, b: memory.new(np.matmul(a, b))
    cupy.cuda = types.SimpleNamespace(device=types.SimpleNamespace(get_cublas_handle=lambda: HANDLE),
                                      runtime=types.SimpleNamespace(CUDA_R_16F=CUDA_R_16F))
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = _binding(memory, calls)
    for name, mod in (("cupy", cupy), ("cupy_backends", types.ModuleType("cupy_backends")),
                      ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                      ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.cublas", libs.cublas)):
        monkeypatch.setitem(sys.modules, name, mod)
    return memory, calls


def test_stand_in_arrays_look_like_cupy(device):
    memory, _ = device
    a = memory.new(np.ones((2, 3)))
    assert _blas.array_namespace(a) is sys.modules["cupy"]
    assert a.T.data.ptr == a.data.ptr and a[1].data.ptr == a.data.ptr + 24


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: d.__name__)
def test_cublas_products(device, dtype):
    """Transposed, broadcast, folded, gapped and strided operands and outputs, with and
    without accumulation: each through one call of the binding of its dtype."""
    memory, calls = device
    rng = np.random.default_rng(0)
    blas = _blas.CuBLAS()
    tol = {np.float16: 2e-2, np.float32: 1e-5, np.float64: 1e-12}[dtype]
    r = lambda *shape: rng.standard_normal(shape).astype(dtype)  # noqa: E731
    cases = [
        (memory.new(r(3, 4, 5)), memory.new(r(3, 6, 5)).swapaxes(1, 2), None),  # transposed b
        (memory.new(r(1, 5, 4)).swapaxes(1, 2), memory.new(r(3, 5, 9))[..., :6], None),  # broadcast a, gap
        (memory.new(r(4, 3, 5)), memory.new(r(1, 5, 2)), None),  # folded into one gemm
        (memory.new(r(7, 5)), memory.new(r(6, 5)).T, memory.new(r(2, 7, 6))[1]),  # 2-D into a view
        (memory.new(r(3, 4, 5)), memory.new(r(3, 5, 6)), memory.new(r(3, 2, 4, 6))[:, 1]),  # strided output
    ]
    for accumulate in (False, True):
        for a, b, out in cases:
            start = None if out is None else np.array(out, np.float64)
            calls.clear()
            got = _blas.matmul(blas, a, b, out=out, accumulate=accumulate and out is not None)
            want = np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64))
            if accumulate and out is not None:
                want = want + start
            np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol * 8)
            assert calls == [(np.dtype(dtype).name, 1.0 if accumulate and out is not None else 0.0)]
