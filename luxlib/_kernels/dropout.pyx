"""Dropout and alpha-dropout kernels: Philox masks fused with the multiply, float32 and float64.

Element ``i`` of a mask (C order, flat) is kept when ``(word >> 8) > thr``, with
``word`` word ``i % 4`` of the Philox4x32-10 block ``i // 4`` and
``thr = floor(p * 2**24)`` (doc/dropout.md proves it equals the reference's
``u > p``). The work is cut into units of ``CHUNK`` elements (a multiple of 4,
so a unit holds whole blocks); a unit first generates its words into a buffer on
the stack, then consumes them in a loop the compiler vectorizes. Units are spread
over threads with a static schedule; every word depends on the key and the
element index only, so the results are the same for every thread count.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from ._openmp_helpers cimport num_threads_for
from ._philox cimport philox_words

cdef enum:
    # elements per work unit: a power of two, so no unit's blocks cross 2**32 (see philox_words)
    CHUNK = 2048
    # most axis groups broadcast_multiply takes (NumPy arrays have at most 64 axes)
    MAX_GROUPS = 64

cdef enum Op:
    MASK        # dst = keep ? a : 0 (the dropout mask); given src, also out = src * dst
    ALPHA       # dst = (keep ? src : c) * a + b; given the byte array keep, also keep[i] = 0/1
    KEEP_SCALE  # dst = (src * keep[i]) * a, keep read from the byte array (no Philox)

cdef struct Stream:
    uint32_t k0, k1  # Philox key
    uint32_t thr     # keep element i when (word_i >> 8) > thr


cdef void _unit(Op op, const Stream* st, floating a, floating b, floating c,
                const floating* src, floating* dst, floating* out, uint8_t* keep,
                Py_ssize_t n, Py_ssize_t u) noexcept nogil:
    """Run ``op`` on the elements ``u * CHUNK ..`` (at most CHUNK) of ``n``."""
    cdef uint32_t words[CHUNK]
    cdef Py_ssize_t start = u * CHUNK, m = min(<Py_ssize_t>CHUNK, n - start), i
    cdef uint32_t thr = st.thr
    cdef floating v, zero = 0
    cdef bint k
    if op != KEEP_SCALE:
        philox_words(<uint64_t>start // 4, (m + 3) // 4, st.k0, st.k1, words)
    dst += start
    if src != NULL:
        src += start
    if keep != NULL:
        keep += start
    if op == MASK:
        if src == NULL:
            for i in range(m):
                dst[i] = a if (words[i] >> 8) > thr else zero
        else:
            out += start
            for i in range(m):
                v = a if (words[i] >> 8) > thr else zero
                dst[i] = v
                out[i] = src[i] * v
    elif op == ALPHA:
        # src[i] is loaded outside the select, so the loops are branch-free and vectorize
        if keep == NULL:
            for i in range(m):
                v = src[i]
                v = v if (words[i] >> 8) > thr else c
                dst[i] = v * a + b
        else:
            for i in range(m):
                k = (words[i] >> 8) > thr
                keep[i] = k
                v = src[i]
                v = v if k else c
                dst[i] = v * a + b
    else:
        for i in range(m):
            v = keep[i]
            dst[i] = (src[i] * v) * a


cdef void _run(Op op, const Stream* st, floating a, floating b, floating c,
               const floating* src, floating* dst, floating* out, uint8_t* keep,
               Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t units = (n + CHUNK - 1) // CHUNK, u
    cdef int nt = num_threads_for(n)
    if nt == 1:
        for u in range(units):
            _unit(op, st, a, b, c, src, dst, out, keep, n, u)
    else:
        for u in prange(units, num_threads=nt, schedule="static"):
            _unit(op, st, a, b, c, src, dst, out, keep, n, u)


cdef _check_length(str name, Py_ssize_t got, Py_ssize_t expected):
    if got != expected:
        raise ValueError(f"dropout kernels: {name} must have {expected} elements, got {got}")


# ---- entry points (flat C-contiguous arrays) ----------------------------------------

def philox_blocks(uint64_t first, Py_ssize_t nblocks, uint32_t k0, uint32_t k1):
    """The words of Philox blocks ``first ..`` as a uint32 array ``(nblocks, 4)`` (for tests)."""
    if nblocks < 0 or (first & 0xFFFFFFFF) + <uint64_t>nblocks > (<uint64_t>1 << 32):
        raise ValueError("dropout kernels: the blocks must not cross a multiple of 2**32")
    out = np.empty((nblocks, 4), np.uint32)
    cdef uint32_t[:, ::1] w = out
    if nblocks:
        philox_words(first, nblocks, k0, k1, &w[0, 0])
    return out


def dropout(uint32_t k0, uint32_t k1, uint32_t thr, double invp, floating[::1] mask,
            const floating[::1] x=None, floating[::1] y=None):
    """``mask = where(keep, invp, 0)``; with ``x`` and ``y`` also ``y = x * mask``, in one pass."""
    cdef Stream st = Stream(k0, k1, thr)
    cdef Py_ssize_t n = mask.shape[0]
    cdef const floating* px = NULL
    cdef floating* py = NULL
    if x is not None or y is not None:
        _check_length("x", 0 if x is None else x.shape[0], n)
        _check_length("y", 0 if y is None else y.shape[0], n)
        if n:
            px = &x[0]
            py = &y[0]
    if n == 0:
        return
    with nogil:
        _run(MASK, &st, <floating>invp, 0, 0, px, &mask[0], py, NULL, n)


def alpha_dropout(uint32_t k0, uint32_t k1, uint32_t thr, double alpha, double A, double B,
                  const floating[::1] x, floating[::1] y, uint8_t[::1] keep=None):
    """``y = where(keep, x, alpha) * A + B`` (constants rounded to ``x``'s dtype).

    ``keep`` (uint8, may be None) receives the keep decisions for the backward pass.
    """
    cdef Stream st = Stream(k0, k1, thr)
    cdef Py_ssize_t n = x.shape[0]
    _check_length("y", y.shape[0], n)
    if keep is not None:
        _check_length("keep", keep.shape[0], n)
    if n == 0:
        return
    with nogil:
        _run(ALPHA, &st, <floating>A, <floating>B, <floating>alpha, &x[0], &y[0], NULL,
             NULL if keep is None else &keep[0], n)


def alpha_dropout_backward(const uint8_t[::1] keep, double A, const floating[::1] dy,
                           floating[::1] dx):
    """``dx = dy * keep * A``."""
    cdef Stream st = Stream(0, 0, 0)
    cdef Py_ssize_t n = dy.shape[0]
    _check_length("keep", keep.shape[0], n)
    _check_length("dx", dx.shape[0], n)
    if n == 0:
        return
    with nogil:
        _run(KEEP_SCALE, &st, <floating>A, 0, 0, &dy[0], &dx[0], NULL, <uint8_t*>&keep[0], n)


cdef void _broadcast_unit(const floating* x, const floating* m, floating* y, Py_ssize_t n,
                          Py_ssize_t G, const Py_ssize_t* lengths, const Py_ssize_t* strides,
                          Py_ssize_t L, bint full, Py_ssize_t u) noexcept nogil:
    """``y = x * m`` on elements ``u * CHUNK ..``, walking the runs of length ``L``."""
    cdef Py_ssize_t digit[MAX_GROUPS]
    cdef Py_ssize_t s = u * CHUNK, e = min(s + CHUNK, n), r = s // L, o = s - r * L
    cdef Py_ssize_t moff = 0, cnt, k, j
    cdef const floating* mm
    cdef floating v
    # mixed-radix digits of the first run over the outer groups, and its mask offset
    for j in range(G - 1, -1, -1):
        digit[j] = r % lengths[j]
        r = r // lengths[j]
        moff += digit[j] * strides[j]
    while s < e:
        cnt = min(L - o, e - s)
        if full:
            mm = m + moff + o
            for k in range(cnt):
                y[s + k] = x[s + k] * mm[k]
        else:
            v = m[moff]
            for k in range(cnt):
                y[s + k] = x[s + k] * v
        s += cnt
        o = 0
        for j in range(G - 1, -1, -1):  # odometer step to the next run
            digit[j] += 1
            moff += strides[j]
            if digit[j] < lengths[j]:
                break
            moff -= lengths[j] * strides[j]
            digit[j] = 0


def broadcast_multiply(const floating[::1] x, const floating[::1] m, floating[::1] y,
                       const Py_ssize_t[::1] lengths, const Py_ssize_t[::1] strides,
                       Py_ssize_t L, bint full):
    """``y = x * m`` with ``m`` broadcast; ``x``, ``y`` flat C-order data of one shape.

    That shape is ``lengths + (L,)`` (axis groups); ``m``'s element for run index
    digits ``d`` starts at ``sum(d * strides)`` and, along the last group, advances
    by 1 when ``full``, else stays (``m`` broadcast there).
    """
    cdef Py_ssize_t n = x.shape[0], G = lengths.shape[0], u
    _check_length("y", y.shape[0], n)
    if G > MAX_GROUPS or strides.shape[0] != G:
        raise ValueError(f"dropout kernels: bad axis groups {list(lengths)}, {list(strides)}")
    if n == 0:
        return
    cdef Py_ssize_t total = L, last = L if full else 1, j
    for j in range(G):
        if lengths[j] < 1:
            raise ValueError(f"dropout kernels: bad axis group lengths {list(lengths)}")
        total *= lengths[j]
        last += (lengths[j] - 1) * strides[j]
    if L < 1 or total != n:
        raise ValueError(f"dropout kernels: axis groups {list(lengths)} + ({L},) do not hold {n} elements")
    _check_length("m", m.shape[0], last)
    cdef Py_ssize_t units = (n + CHUNK - 1) // CHUNK
    cdef int nt = num_threads_for(n)
    cdef const Py_ssize_t* pl = &lengths[0] if G else NULL
    cdef const Py_ssize_t* ps = &strides[0] if G else NULL
    with nogil:
        if nt == 1:
            for u in range(units):
                _broadcast_unit(&x[0], &m[0], &y[0], n, G, pl, ps, L, full, u)
        else:
            for u in prange(units, num_threads=nt, schedule="static"):
                _broadcast_unit(&x[0], &m[0], &y[0], n, G, pl, ps, L, full, u)
