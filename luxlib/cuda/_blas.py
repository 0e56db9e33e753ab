"""Row-major products of the GPU path on cuBLAS's strided-batched gemm, called directly.

``cupy.matmul`` spent 25-70 us of host time per call on the H200 run of 2026-11-25 (72 us
on a batch of small matrices) before cuBLAS started. :func:`matmul` makes one cuBLAS call
per product itself, with every operand as it is stored: a transposed view (``w.T``,
``y.transpose(0, 2, 1)``), or an operand the caller asks to transpose (``transpose_a``,
``transpose_b``: no view made), through the transpose flag, a batch of 1 through batch
stride 0, never a copy for either. The layouts come from shapes and strides, without views.

cuBLAS is column-major. The memory of a row-major ``(r, c)`` matrix with row stride ``ld``
is the column-major ``(c, r)`` matrix with leading dimension ``ld``: its transpose. So
``C = A @ B`` (row-major) is ``C^T = B^T A^T`` (column-major): cuBLAS gets ``B`` as its
first operand and ``A`` as its second, ``m = N`` and ``n = M``, and an operand stored
transposed (``trans`` of :func:`luxlib._blas_layout.blas_operand`) gets the transpose flag.
Against a ``B`` with a batch of 1, row-major ``A`` matrices that follow one another at
``M * lda`` fold into one gemm over ``batch * M`` rows.

The ``blas`` argument is :func:`get_blas`'s :class:`CuBLAS` for CuPy arrays; the CPU
emulation of the tests passes an object with the same ``gemm_strided_batched`` over NumPy
arrays (``tests/cuda/emu/emu_blas.py``), so this module's layout logic runs in CI.
"""

import functools

import numpy as np

from .._blas_layout import c_order_steps, matrix_layout
from .._validation import array_namespace

__all__ = ["CuBLAS", "get_blas", "matmul"]

#: cuBLAS takes dimensions, leading dimensions and the batch count as 32-bit ints
INT_MAX = 2**31 - 1


class CuBLAS:
    """cuBLAS's column-major ``C[i] = op(A[i]) op(B[i]) (+ C[i])`` on CuPy arrays."""

    def __init__(self):
        import cupy  # only reached with CuPy arrays, whose owner has CuPy
        from cupy_backends.cuda.libs import cublas

        self._cublas = cublas
        self._handle = cupy.cuda.device.get_cublas_handle
        self._half = cupy.cuda.runtime.CUDA_R_16F
        self._gemm = {np.dtype(np.float32): cublas.sgemmStridedBatched,
                      np.dtype(np.float64): cublas.dgemmStridedBatched}
        # alpha = 1 and beta = 0 or 1 in host memory (the handle's default pointer mode), in
        # the compute type: float64 for float64, float32 for float32 and float16; looked up by
        # the output's dtype (comparing a dtype with a type costs microseconds a call)
        self._scalars = {t: (np.ones(1, t), np.zeros(1, t)) for t in (np.float32, np.float64)}
        self._pointers = {np.dtype(t): (self._scalars[c][0].ctypes.data, self._scalars[c][1].ctypes.data)
                          for t, c in ((np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64))}

    def gemm_strided_batched(self, trans_a, trans_b, m, n, k, a, lda, stride_a, b, ldb, stride_b,
                             accumulate, c, ldc, stride_c, batch):
        """``C[i] = op(A[i]) @ op(B[i])``, plus ``C[i]`` with ``accumulate``, for ``i < batch``.

        Column-major, as cuBLAS takes them: ``op(A)`` is ``m x k``, ``op(B)`` ``k x n``, ``C``
        ``m x n``; ``a``, ``b``, ``c`` are arrays whose first elements start the first matrices,
        strides and leading dimensions count elements. float16 computes in float32.
        """
        cublas = self._cublas
        op_a = cublas.CUBLAS_OP_T if trans_a else cublas.CUBLAS_OP_N
        op_b = cublas.CUBLAS_OP_T if trans_b else cublas.CUBLAS_OP_N
        one, zero = self._pointers[c.dtype]
        beta = one if accumulate else zero
        gemm = self._gemm.get(c.dtype)
        if gemm is None:  # float16
            half = self._half
            cublas.gemmStridedBatchedEx(
                self._handle(), op_a, op_b, m, n, k, one, a.data.ptr, half, lda, stride_a,
                b.data.ptr, half, ldb, stride_b, beta, c.data.ptr, half, ldc, stride_c, batch,
                cublas.CUBLAS_COMPUTE_32F, cublas.CUBLAS_GEMM_DEFAULT,
            )
        else:
            gemm(self._handle(), op_a, op_b, m, n, k, one, a.data.ptr, lda, stride_a,
                                b.data.ptr, ldb, stride_b, beta, c.data.ptr, ldc, stride_c, batch)


_BLAS = []


def get_blas():
    """The process's :class:`CuBLAS` (made on first use)."""
    if not _BLAS:
        _BLAS.append(CuBLAS())
    return _BLAS[0]


def _batched(shape, strides=None):
    """``(shape, strides)`` of a 2-D or 3-D array as a stack of matrices (a 2-D array is a
    batch of 1). Shapes and strides only: on a GPU every view costs microseconds of host time."""
    if len(shape) == 3:
        return shape, strides
    return (1,) + tuple(shape), None if strides is None else (0,) + tuple(strides)


def _operand_layout(shape, strides, item):
    """``(trans, ld, stride)``: how cuBLAS reads a 2-D or 3-D operand as it is stored
    (:func:`luxlib._blas_layout.blas_operand`'s rules) plus its batch stride in elements (0
    for a batch of 1), or None when it must be copied."""
    (batch, rows, cols), (sb, srow, scol) = _batched(shape, strides)
    stride = 0 if batch == 1 else sb // item
    layout = matrix_layout(rows, cols, srow, scol, item) if sb % item == 0 and stride >= 0 else None
    return None if layout is None else layout + (stride,)


def _matrices(shape, strides, transpose):
    """``(shape, strides)`` of an array, or with ``transpose`` of its matrices transposed (the
    last two axes swapped)."""
    if not transpose:
        return shape, strides
    return shape[:-2] + (shape[-1], shape[-2]), strides[:-2] + (strides[-1], strides[-2])


def _view(a, transpose):
    """``a``, or the view of its matrices transposed."""
    return a.swapaxes(-1, -2) if transpose else a


def _operand(shape, strides, item):
    """``(copy, trans, ld, stride)``: how cuBLAS reads the operand of ``shape`` and ``strides``
    as stored (:func:`_operand_layout`, ``copy`` False), or its copy in C order (``copy``
    True) when it cannot be read so."""
    layout = _operand_layout(shape, strides, item)
    if layout is not None:
        return (False,) + layout
    batch, rows, cols = _batched(shape)[0]
    return True, False, max(1, cols), 0 if batch == 1 else rows * cols


def _output(shape, strides, item):
    """``(ldc, stride)`` of a 2-D or 3-D output whose rows have unit column stride and whose
    matrices do not overlap (cuBLAS would write them concurrently), else None."""
    (batch, m, n), (sb, sm, sn) = _batched(shape, strides)
    if (n > 1 and sn != item) or sm % item or sb % item or sb < 0 or sm < 0:
        return None
    ldc = sm // item if m > 1 else max(1, n)
    if ldc < max(1, n):
        return None
    if batch == 1:
        return ldc, 0
    if sb // item < (m - 1) * ldc + n:
        return None
    return ldc, sb // item


# How matmul computes a product (_plan's kinds)
_EMPTY, _ZERO, _SPLIT, _NAMESPACE, _GEMM = range(5)


@functools.lru_cache(maxsize=1024)
def _plan(a, b, out, transpose_a, transpose_b, int_max):
    """How :func:`matmul` computes the product of operands ``a`` and ``b`` given as ``(shape,
    strides, itemsize)`` into ``out`` (``(shape, strides, itemsize, whether the operands'
    dtype)``, or None for a new C-ordered output): ``(product shape, kind, gemm)``, ``gemm``
    the cuBLAS arguments without the arrays and whether each operand is copied first.

    Shapes, strides and item sizes decide everything, so the plan is cached: its Python
    arithmetic costs microseconds a product, which on a GPU is host time."""
    item = a[2]
    (a_shape, a_strides), (b_shape, b_strides) = _matrices(*a[:2], transpose_a), _matrices(*b[:2], transpose_b)
    (ba, m, k), (bb, _, n) = _batched(a_shape)[0], _batched(b_shape)[0]
    batch = 0 if 0 in (ba, bb) else max(ba, bb)
    shape = (batch, m, n) if 3 in (len(a_shape), len(b_shape)) else (m, n)
    if out is None:
        out = shape, tuple(s * item for s in c_order_steps(shape)), item, True
    out_shape, out_strides, out_item, same_dtype = out
    if len(out_shape) not in (2, 3) or _batched(out_shape)[0] != (batch, m, n):
        raise ValueError(f"cuda matmul: out has shape {out_shape}, the product {(batch, m, n)}")
    if 0 in out_shape:
        return shape, _EMPTY, None
    if k == 0:  # empty sums, decided here rather than by cuBLAS's quick returns
        return shape, _ZERO, None
    layout = _output(out_shape, out_strides, out_item) if same_dtype else None
    if layout is None:  # e.g. float16 products into a float32 sum: a product, then its sum
        return shape, _SPLIT, None
    ldc, sc = layout
    copy_a, ta, lda, sa = _operand(a_shape, a_strides, item)
    copy_b, tb, ldb, sb = _operand(b_shape, b_strides, item)
    rows, items = m, batch
    if batch > 1 and sb == 0 and not ta and sa == m * lda and sc == m * ldc:
        rows, items = batch * m, 1  # one gemm over the rows of every matrix of a
    if max(rows, n, k, lda, ldb, ldc, items) > int_max:  # beyond cuBLAS's ints
        return shape, _NAMESPACE, None
    return shape, _GEMM, (copy_a, copy_b, (tb, ta, n, rows, k), (ldb, sb), (lda, sa), (ldc, sc, items))


def _store(out, product, accumulate):
    if accumulate:
        out += product
    else:
        out[...] = product
    return out


def matmul(blas, a, b, out=None, accumulate=False, transpose_a=False, transpose_b=False):
    """``out = a @ b``, or ``out += a @ b`` with ``accumulate``, by one cuBLAS call.

    Parameters
    ----------
    blas : CuBLAS
        :func:`get_blas`'s object (or the tests' emulation of it).
    a, b : arrays
        2-D or 3-D, the same dtype; 3-D batches equal or 1 (a 2-D operand is a batch of 1).
    out : array, optional
        ``(batch, M, N)`` (``(M, N)`` when both are 2-D), any strides; new when None.
    accumulate : bool
        Add the product to ``out`` instead of overwriting it.
    transpose_a, transpose_b : bool
        Multiply by the transposes of ``a``'s (``b``'s) matrices, as ``a.swapaxes(-1, -2)``
        would give them, without making that view (microseconds of host time on a GPU).

    Returns
    -------
    array
        ``out``.
    """
    if a.dtype != b.dtype:
        raise ValueError(f"cuda matmul: operand dtypes differ ({a.dtype}, {b.dtype})")
    shape, kind, gemm = _plan(
        (a.shape, a.strides, a.itemsize), (b.shape, b.strides, b.itemsize),
        None if out is None else (out.shape, out.strides, out.itemsize, out.dtype == a.dtype),
        transpose_a, transpose_b, INT_MAX,
    )
    if out is None:
        out = array_namespace(a, b).empty(shape, a.dtype)
    if kind == _GEMM:
        copy_a, copy_b, dims, b_layout, a_layout, c_layout = gemm
        if copy_a:
            a = array_namespace(a).ascontiguousarray(_view(a, transpose_a))
        if copy_b:
            b = array_namespace(b).ascontiguousarray(_view(b, transpose_b))
        blas.gemm_strided_batched(*dims, b, *b_layout, a, *a_layout, accumulate, out, *c_layout)
    elif kind == _ZERO:
        if not accumulate:
            out[...] = 0
    elif kind == _SPLIT:
        _store(out, matmul(blas, a, b, transpose_a=transpose_a, transpose_b=transpose_b), accumulate)
    elif kind == _NAMESPACE:
        _store(out, array_namespace(a, b).matmul(_view(a, transpose_a), _view(b, transpose_b)), accumulate)
    return out
