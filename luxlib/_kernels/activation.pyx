"""Fused bias + activation kernels, forward and backward, float32 and float64.

``x`` is viewed as a C-contiguous ``(N, C, S)`` array (S = product of the spatial
axes) and ``bias`` as ``(C,)``. The activation is chosen by its id, the position in
``luxlib.activations._TABLE``, evaluated by the vectorized run loops of
``_activation.pxd`` on each block, with the bias added inside the activation's loop
(one pass over ``x``: its loads overlap the math; the backward pass recomputes
``z = x + bias`` the same way). ``db`` is summed from the block of ``dx`` while it
sits in L1, accumulating in float64.

Parallelism: the work is cut into blocks of at most ``BLOCK`` contiguous elements
sharing one bias pattern (a single row, such as ``fast_activation``'s, has its blocks
start on cache lines of the output, except when they group ``db`` sums); blocks are
spread over threads with a static schedule.
``db`` is summed per thread and the per-thread sums are added in thread order, so
the result is deterministic for a given thread count.
"""

import numpy as np

from cython cimport floating
from cython.parallel cimport prange, threadid

from ._activation cimport (N_ACTIVATIONS as _N_IDS, _output_only, act_backward_bias_n,
                          act_backward_n, act_forward_bias_n, act_forward_n)
from ._fastmath cimport fastmath_n
from ._openmp_helpers cimport num_threads_for

#: number of activation ids the kernels implement (ids 0 .. N_ACTIVATIONS - 1)
N_ACTIVATIONS = _N_IDS

cdef enum:
    BLOCK = 2048
    # db partial sums of different threads start on different cache lines
    PAD = 8

# ---- blocks --------------------------------------------------------------------

cdef struct Geometry:
    Py_ssize_t C, S   # channels, elements per (sample, channel)
    Py_ssize_t L      # length of a row: C when S == 1 (bias varies along it), else S
    Py_ssize_t nb     # blocks per row
    Py_ssize_t shift  # a row's first block is this much shorter


cdef Geometry _geometry(Py_ssize_t C, Py_ssize_t S, Py_ssize_t total, const void* out,
                        Py_ssize_t size) noexcept nogil:
    """Blocks of ``total`` elements viewed as ``(N, C, S)``. When they form one row (as
    in ``fast_activation``) and ``out`` is not NULL, the row's first block is shortened
    so that the others start on cache lines of ``out``: the vector loops' accesses then
    do not straddle lines (NumPy's large arrays start 16 bytes past one)."""
    cdef Geometry g
    g.C = C
    g.S = S
    g.L = C if S == 1 else S
    g.shift = 0
    if g.L == total and out != NULL and <size_t>out % size == 0:
        g.shift = (<size_t>out % 64) // size
    g.nb = (g.L + g.shift + BLOCK - 1) // BLOCK
    return g


cdef inline Py_ssize_t _block(const Geometry* g, Py_ssize_t u, Py_ssize_t* start,
                              Py_ssize_t* n) noexcept nogil:
    """Set the element range of block ``u``; return the channel of its first element."""
    cdef Py_ssize_t row = u // g.nb, k = u % g.nb
    cdef Py_ssize_t a = max(k * BLOCK - g.shift, 0), b = min((k + 1) * BLOCK - g.shift, g.L)
    start[0] = row * g.L + a
    n[0] = b - a
    return a if g.S == 1 else row % g.C


cdef inline double _sum(const floating* a, Py_ssize_t n) noexcept nogil:
    """Sum in float64 with 8 independent accumulators (a single one is latency-bound)."""
    cdef double s[8]
    cdef Py_ssize_t i = 0, k
    for k in range(8):
        s[k] = 0
    while i + 8 <= n:
        for k in range(8):
            s[k] += a[i + k]
        i += 8
    for k in range(n - i):
        s[k] += a[i + k]
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))


cdef void _forward_block(int act, floating p, const floating* x, const floating* bias,
                         floating* y, const Geometry* g, Py_ssize_t u) noexcept nogil:
    cdef Py_ssize_t start, n
    cdef Py_ssize_t c = _block(g, u, &start, &n)
    x += start
    y += start
    if bias == NULL:
        act_forward_n(act, p, x, y, n)
    else:
        act_forward_bias_n(act, p, x, bias + c, g.S == 1, y, n)


cdef void _backward_block(int act, floating p, const floating* src, const floating* bias,
                          const floating* dy, floating* dx, double* acc, const Geometry* g,
                          Py_ssize_t u) noexcept nogil:
    """``dx = dy * act'`` on block ``u``; adds ``dx`` into ``acc`` (C,) unless NULL."""
    cdef Py_ssize_t start, n, i
    cdef Py_ssize_t c = _block(g, u, &start, &n)
    src += start
    dy += start
    dx += start
    if bias == NULL:
        act_backward_n(act, p, src, dy, dx, n)
    else:  # z = x + bias recomputed in the loop
        act_backward_bias_n(act, p, src, bias + c, g.S == 1, dy, dx, n)
    if acc == NULL:
        return
    if g.S == 1:
        for i in range(n):
            acc[c + i] += dx[i]
    else:
        acc[c] += _sum(dx, n)


# ---- entry points ---------------------------------------------------------------

_FAST_MATH = ("exp", "expm1", "log1p", "tanh", "erf")


def fastmath(str name, const float[::1] x, float[::1] out):
    """``out = name(x)`` with the float32 math of ``_fastmath.pxd`` (accuracy tests)."""
    cdef int which = _FAST_MATH.index(name)
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"fastmath: out must have length {x.shape[0]}, got {out.shape[0]}")
    if x.shape[0]:
        with nogil:
            fastmath_n(which, &x[0], &out[0], x.shape[0])


def output_only(int act):
    """Whether the kernels compute activation ``act``'s derivative from its output."""
    _check_id(act)
    return bool(_output_only(act))


cdef _check_id(int act):
    if not 0 <= act < N_ACTIVATIONS:
        raise ValueError(f"activation kernels: unknown activation id {act}")


cdef _check_same(str name, const Py_ssize_t* shape, const Py_ssize_t* expected):
    if shape[0] != expected[0] or shape[1] != expected[1] or shape[2] != expected[2]:
        raise ValueError(f"activation kernels: {name} must have shape "
                         f"{(expected[0], expected[1], expected[2])}, got {(shape[0], shape[1], shape[2])}")


def forward(int act, double p, const floating[:, :, ::1] x, const floating[::1] bias,
            floating[:, :, ::1] y):
    """``y = act(x + bias)`` over ``(N, C, S)`` arrays; ``bias`` ``(C,)`` or None.

    ``y`` may be ``x`` itself.
    """
    _check_id(act)
    _check_same("y", y.shape, x.shape)
    if bias is not None and bias.shape[0] != x.shape[1]:
        raise ValueError(f"activation kernels: bias must have length {x.shape[1]}, got {bias.shape[0]}")
    cdef Py_ssize_t total = x.shape[0] * x.shape[1] * x.shape[2]
    if total == 0:
        return
    cdef floating* py = &y[0, 0, 0]
    cdef Geometry g = _geometry(x.shape[1], x.shape[2], total, py, sizeof(floating))
    cdef Py_ssize_t units = (total // g.L) * g.nb, u
    cdef int nt = num_threads_for(total)
    cdef floating fp = <floating>p
    cdef const floating* px = &x[0, 0, 0]
    cdef const floating* pb = NULL
    if bias is not None:
        pb = &bias[0]
    with nogil:
        if nt == 1:
            for u in range(units):
                _forward_block(act, fp, px, pb, py, &g, u)
        else:
            for u in prange(units, num_threads=nt, schedule="static"):
                _forward_block(act, fp, px, pb, py, &g, u)


def backward(int act, double p, const floating[:, :, ::1] src, const floating[::1] bias,
             const floating[:, :, ::1] dy, floating[:, :, ::1] dx, floating[::1] db):
    """``dx = dy * act'(z)`` and ``db = dx`` summed over N and S, in one pass.

    ``src`` is the output ``y`` for output-only activations (``bias`` is then not
    read), otherwise the input ``x`` (``z = x + bias`` is recomputed). ``db`` (C,)
    may be None.
    """
    _check_id(act)
    _check_same("dy", dy.shape, src.shape)
    _check_same("dx", dx.shape, src.shape)
    cdef Py_ssize_t C = src.shape[1], c, t
    if bias is not None and bias.shape[0] != C:
        raise ValueError(f"activation kernels: bias must have length {C}, got {bias.shape[0]}")
    if db is not None and db.shape[0] != C:
        raise ValueError(f"activation kernels: db must have length {C}, got {db.shape[0]}")
    cdef Py_ssize_t total = src.shape[0] * C * src.shape[2]
    if total == 0:
        if db is not None:
            db[:] = 0
        return
    cdef floating* pdx = &dx[0, 0, 0]
    # blocks that follow dx's alignment only without db: they group its sums, which must
    # not depend on where dx lies
    cdef Geometry g = _geometry(C, src.shape[2], total, pdx if db is None else NULL,
                                sizeof(floating))
    cdef Py_ssize_t units = (total // g.L) * g.nb, u
    cdef int nt = num_threads_for(total)
    cdef Py_ssize_t stride = (C + PAD - 1) // PAD * PAD
    cdef double[:, ::1] partial = np.zeros((nt, stride if db is not None else 0))
    cdef double* acc0 = NULL if db is None else &partial[0, 0]
    cdef double* acc
    cdef floating fp = <floating>p
    cdef const floating* ps = &src[0, 0, 0]
    cdef const floating* pb = NULL
    cdef const floating* pdy = &dy[0, 0, 0]
    cdef double s
    if bias is not None and not _output_only(act):
        pb = &bias[0]
    with nogil:
        if nt == 1:
            for u in range(units):
                _backward_block(act, fp, ps, pb, pdy, pdx, acc0, &g, u)
        else:
            for u in prange(units, num_threads=nt, schedule="static"):
                acc = NULL if acc0 == NULL else acc0 + threadid() * stride
                _backward_block(act, fp, ps, pb, pdy, pdx, acc, &g, u)
        if acc0 != NULL:
            for c in range(C):
                s = 0
                for t in range(nt):
                    s += acc0[t * stride + c]
                db[c] = <floating>s
