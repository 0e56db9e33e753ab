"""Fused bias + activation kernels, forward and backward, float32 and float64.

``x`` is viewed as a C-contiguous ``(N, C, S)`` array (S = product of the spatial
axes) and ``bias`` as ``(C,)``. The activation is chosen by its id, the position in
``luxlib.activations._TABLE``; every formula below repeats that table's expression
in the same order of operations, so NaN/Inf propagate exactly as on the generic path.

Precision: float32 is evaluated in float32 (every literal is cast, libm's ``*f``
functions) except ``erf``, which runs in float64 as SciPy's float32 loop does, and
the ``db`` reduction, which accumulates in float64.

Parallelism: the work is cut into blocks of at most ``BLOCK`` contiguous elements
sharing one bias pattern; blocks are spread over threads with a static schedule.
``db`` is summed per thread and the per-thread sums are added in thread order, so
the result is deterministic for a given thread count.
"""

import numpy as np

from cython.parallel cimport prange, threadid
from libc.math cimport (
    M_PI, erf, exp, expf, expm1, expm1f, fabs, fabsf, log1p, log1pf, sqrt, tanh, tanhf,
)

from ._openmp_helpers cimport num_threads_for

ctypedef fused floating:
    float
    double

#: number of activation ids the kernels implement (ids 0 .. N_ACTIVATIONS - 1)
N_ACTIVATIONS = 26

cdef enum:
    BLOCK = 2048
    # db partial sums of different threads start on different cache lines
    PAD = 8

cdef double GELU_LAMBDA = sqrt(2 / M_PI)
cdef double GELU_2LAMBDA = sqrt(8 / M_PI)
cdef double GELU_ALPHA = 0.044715
cdef double GELU_3ALPHA = 3 * GELU_ALPHA
cdef double SQRT2 = sqrt(2.0)
cdef double SQRT2PI = sqrt(2 * M_PI)
cdef double SELU_LAMBDA = 1.0507009873554804934193349852946
cdef double SELU_ALPHA = 1.6732632423543772848170429916717
cdef double SELU_ALPHA_LAMBDA = SELU_ALPHA * SELU_LAMBDA


# ---- libm in the precision of the element type --------------------------------

cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _expm1(floating v) noexcept nogil:
    if floating is float:
        return expm1f(v)
    else:
        return expm1(v)


cdef inline floating _log1p(floating v) noexcept nogil:
    if floating is float:
        return log1pf(v)
    else:
        return log1p(v)


cdef inline floating _tanh(floating v) noexcept nogil:
    if floating is float:
        return tanhf(v)
    else:
        return tanh(v)


cdef inline floating _fabs(floating v) noexcept nogil:
    if floating is float:
        return fabsf(v)
    else:
        return fabs(v)


cdef inline floating _erf(floating v) noexcept nogil:
    return <floating>erf(<double>v)


# ---- helpers with NumPy's NaN semantics (np.clip / np.maximum propagate NaN) --

cdef inline floating _clip(floating v, floating lo, floating hi) noexcept nogil:
    if v < lo:
        return lo
    if v > hi:
        return hi
    return v


cdef inline floating _sigmoid(floating v) noexcept nogil:
    cdef floating t = _exp(-_fabs(v))
    if v >= 0:
        return <floating>1 / (<floating>1 + t)
    return t / (<floating>1 + t)


cdef inline floating _softplus(floating v) noexcept nogil:
    return _log1p(_exp(-_fabs(v))) + (<floating>0 if v < 0 else v)


cdef inline floating _gelu_sigmoid_arg(floating z, floating z2) noexcept nogil:
    return <floating>GELU_2LAMBDA * z * (z2 * <floating>GELU_ALPHA + <floating>1)


# ---- the table -----------------------------------------------------------------

cdef inline bint _output_only(int act) noexcept nogil:
    return act <= 6 or 10 <= act <= 15 or act >= 24


cdef inline floating _act(int act, floating z, floating p) noexcept nogil:
    """``act(z)``; ``p`` is the activation's bound parameter, if it has one."""
    if act == 0:  # identity
        return z
    elif act == 1:  # relu
        return <floating>0 if z < 0 else z
    elif act == 2:  # relu6
        return _clip(z, <floating>0, <floating>6)
    elif act == 3:  # leakyrelu(a)
        return z if z > 0 else p * z
    elif act == 4:  # elu(alpha)
        return z if z >= 0 else p * _expm1(z)
    elif act == 5:  # celu(alpha)
        return z if z >= 0 else p * _expm1(z / p)
    elif act == 6:  # selu
        return <floating>SELU_LAMBDA * (z if z > 0 else <floating>SELU_ALPHA * _expm1(z))
    elif act == 7:  # gelu (tanh approximation)
        return z / <floating>2 * (<floating>1 + _tanh(
            <floating>GELU_LAMBDA * (z + <floating>GELU_ALPHA * z * z * z)))
    elif act == 8:  # gelu_erf
        return z / <floating>2 * (<floating>1 + _erf(z / <floating>SQRT2))
    elif act == 9:  # gelu_sigmoid
        return z * _sigmoid(_gelu_sigmoid_arg(z, z * z))
    elif act == 10:  # sigmoid
        return _sigmoid(z)
    elif act == 11:  # sigmoid_fast
        if z > 40:
            return <floating>1
        if z < -80:
            return <floating>0
        return _sigmoid(z)
    elif act == 12:  # hardsigmoid
        return _clip((z + <floating>3) / <floating>6, <floating>0, <floating>1)
    elif act == 13 or act == 14:  # tanh, tanh_fast
        return _tanh(z)
    elif act == 15:  # hardtanh
        return _clip(z, <floating>-1, <floating>1)
    elif act == 16:  # softplus
        return _softplus(z)
    elif act == 17:  # softsign
        return z / (<floating>1 + _fabs(z))
    elif act == 18:  # logsigmoid
        return -_softplus(-z)
    elif act == 19:  # swish
        return z * _sigmoid(z)
    elif act == 20:  # hardswish
        return z * _clip((z + <floating>3) / <floating>6, <floating>0, <floating>1)
    elif act == 21:  # lisht
        return z * _tanh(z)
    elif act == 22:  # mish
        return z * _tanh(_softplus(z))
    elif act == 23:  # tanhshrink
        return z - _tanh(z)
    elif act == 24:  # softshrink(lam)
        if z + p > 0:
            return <floating>0 if z - p < 0 else z - p
        return z + p
    else:  # 25: trelu(theta)
        return <floating>0 if z <= p else z


cdef inline floating _dact_from_output(int act, floating y, floating p) noexcept nogil:
    """``act'`` from the output ``y``, for the output-only activations."""
    if act == 0:  # identity
        return <floating>1
    elif act == 1:  # relu
        return <floating>(y > 0)
    elif act == 2:  # relu6
        return <floating>(y > 0 and y < 6)
    elif act == 3:  # leakyrelu(a)
        return <floating>1 if y > 0 else p
    elif act == 4:  # elu(alpha)
        return <floating>1 if y >= 0 else y + p
    elif act == 5:  # celu(alpha)
        return <floating>1 if y > 0 else y / p + <floating>1
    elif act == 6:  # selu
        return <floating>SELU_LAMBDA if y > 0 else y + <floating>SELU_ALPHA_LAMBDA
    elif act == 10 or act == 11:  # sigmoid, sigmoid_fast
        return y * (<floating>1 - y)
    elif act == 12:  # hardsigmoid
        return <floating>(y > 0 and y < 1) / <floating>6
    elif act == 13 or act == 14:  # tanh, tanh_fast
        return <floating>1 - y * y
    elif act == 15:  # hardtanh
        return <floating>(y > -1 and y < 1)
    else:  # 24 softshrink, 25 trelu
        return <floating>(y != 0)


cdef inline floating _dact_from_input(int act, floating z, floating p) noexcept nogil:
    """``act'`` from the input ``z``, for the activations that need it."""
    cdef floating z2, w, t
    if act == 7:  # gelu (tanh approximation)
        z2 = z * z
        w = _tanh(<floating>GELU_LAMBDA * z * (z2 * <floating>GELU_ALPHA + <floating>1))
        return ((<floating>1 + w) / <floating>2
                + z * <floating>GELU_LAMBDA * (z2 * <floating>GELU_3ALPHA + <floating>1)
                * (<floating>1 - w * w) / <floating>2)
    elif act == 8:  # gelu_erf
        w = (<floating>1 + _erf(z / <floating>SQRT2)) / <floating>2
        return w + z * _exp(-(z * z) / <floating>2) / <floating>SQRT2PI
    elif act == 9:  # gelu_sigmoid
        z2 = z * z
        w = _sigmoid(_gelu_sigmoid_arg(z, z2))
        return (w * (<floating>1 - w) * <floating>GELU_2LAMBDA
                * (z2 * <floating>GELU_3ALPHA + <floating>1) * z + w)
    elif act == 16:  # softplus
        return _sigmoid(z)
    elif act == 17:  # softsign
        t = <floating>1 + _fabs(z)
        return <floating>1 / (t * t)
    elif act == 18:  # logsigmoid
        return _sigmoid(-z)
    elif act == 19:  # swish: y + sigmoid(z) (1 - y)
        w = _sigmoid(z)
        t = z * w
        return t + w * (<floating>1 - t)
    elif act == 20:  # hardswish
        if z < -3:
            return <floating>0
        if z > 3:
            return <floating>1
        return z / <floating>3 + <floating>0.5
    elif act == 21:  # lisht
        t = _tanh(z)
        return t + z * (<floating>1 - t * t)
    elif act == 22:  # mish
        t = _tanh(_softplus(z))
        return t + z * (<floating>1 - t * t) * _sigmoid(z)
    else:  # 23: tanhshrink: (z - y)^2
        t = z - (z - _tanh(z))
        return t * t


# ---- blocks --------------------------------------------------------------------

cdef struct Geometry:
    Py_ssize_t C, S   # channels, elements per (sample, channel)
    Py_ssize_t L      # length of a row: C when S == 1 (bias varies along it), else S
    Py_ssize_t nb     # blocks per row


cdef Geometry _geometry(Py_ssize_t C, Py_ssize_t S) noexcept nogil:
    cdef Geometry g
    g.C = C
    g.S = S
    g.L = C if S == 1 else S
    g.nb = (g.L + BLOCK - 1) // BLOCK
    return g


cdef inline Py_ssize_t _block(const Geometry* g, Py_ssize_t u, Py_ssize_t* start,
                              Py_ssize_t* n) noexcept nogil:
    """Set the element range of block ``u``; return the channel of its first element."""
    cdef Py_ssize_t row = u // g.nb, k = u % g.nb
    start[0] = row * g.L + k * BLOCK
    n[0] = min(<Py_ssize_t>BLOCK, g.L - k * BLOCK)
    return k * BLOCK if g.S == 1 else row % g.C


cdef void _forward_block(int act, floating p, const floating* x, const floating* bias,
                         floating* y, const Geometry* g, Py_ssize_t u) noexcept nogil:
    cdef Py_ssize_t start, n, i
    cdef Py_ssize_t c = _block(g, u, &start, &n)
    cdef Py_ssize_t bstride = g.S == 1  # 1: one bias per element, 0: one per block
    x += start
    y += start
    if bias == NULL:
        for i in range(n):
            y[i] = _act(act, x[i], p)
    else:
        bias += c
        for i in range(n):
            y[i] = _act(act, x[i] + bias[i * bstride], p)


cdef void _backward_block(int act, floating p, const floating* src, const floating* bias,
                          const floating* dy, floating* dx, double* acc, const Geometry* g,
                          Py_ssize_t u) noexcept nogil:
    """``dx = dy * act'`` on block ``u``; adds ``dx`` into ``acc`` (C,) unless NULL."""
    cdef Py_ssize_t start, n, i
    cdef Py_ssize_t c = _block(g, u, &start, &n)
    cdef Py_ssize_t bstride = g.S == 1
    cdef bint from_output = _output_only(act)
    cdef floating d, z
    cdef double s = 0
    src += start
    dy += start
    dx += start
    if bias != NULL:
        bias += c
    for i in range(n):
        if from_output:
            d = _dact_from_output(act, src[i], p)
        else:
            z = src[i] if bias == NULL else src[i] + bias[i * bstride]
            d = _dact_from_input(act, z, p)
        dx[i] = dy[i] * d
        if bstride:
            if acc != NULL:
                acc[c + i] += dx[i]
        else:
            s += dx[i]
    if acc != NULL and not bstride:
        acc[c] += s


# ---- entry points ---------------------------------------------------------------

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
    cdef Geometry g = _geometry(x.shape[1], x.shape[2])
    cdef Py_ssize_t units = (total // g.L) * g.nb, u
    cdef int nt = num_threads_for(total)
    cdef floating fp = <floating>p
    cdef const floating* px = &x[0, 0, 0]
    cdef const floating* pb = NULL
    cdef floating* py = &y[0, 0, 0]
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
    cdef Geometry g = _geometry(C, src.shape[2])
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
    cdef floating* pdx = &dx[0, 0, 0]
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
