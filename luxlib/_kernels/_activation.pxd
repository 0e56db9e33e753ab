# Scalar activation math shared by every kernel that fuses an activation: the
# table of luxlib.activations evaluated by id, its derivative from the output
# (output-only activations) or from the input, in the element type's precision.
#
# Every formula repeats the table's expression in the same order of operations, so
# NaN/Inf propagate exactly as on the generic path. float32 runs in float32 (libm's
# *f functions) except erf, which runs in float64 as SciPy's float32 loop does.

from cython cimport floating
from libc.math cimport erf, exp, expf, expm1, expm1f, fabs, fabsf, log1p, log1pf, tanh, tanhf

cdef extern from *:
    """
    #define LUXLIB_GELU_LAMBDA 0.79788456080286535588     /* sqrt(2 / pi) */
    #define LUXLIB_GELU_2LAMBDA 1.5957691216057307118     /* sqrt(8 / pi) */
    #define LUXLIB_GELU_ALPHA 0.044715
    #define LUXLIB_GELU_3ALPHA (3 * 0.044715)
    #define LUXLIB_SQRT2 1.4142135623730950488
    #define LUXLIB_SQRT2PI 2.5066282746310005024          /* sqrt(2 pi) */
    #define LUXLIB_SELU_LAMBDA 1.0507009873554804934193349852946
    #define LUXLIB_SELU_ALPHA 1.6732632423543772848170429916717
    #define LUXLIB_SELU_ALPHA_LAMBDA (1.6732632423543772848170429916717 * 1.0507009873554804934193349852946)
    """
    const double GELU_LAMBDA "LUXLIB_GELU_LAMBDA"
    const double GELU_2LAMBDA "LUXLIB_GELU_2LAMBDA"
    const double GELU_ALPHA "LUXLIB_GELU_ALPHA"
    const double GELU_3ALPHA "LUXLIB_GELU_3ALPHA"
    const double SQRT2 "LUXLIB_SQRT2"
    const double SQRT2PI "LUXLIB_SQRT2PI"
    const double SELU_LAMBDA "LUXLIB_SELU_LAMBDA"
    const double SELU_ALPHA "LUXLIB_SELU_ALPHA"
    const double SELU_ALPHA_LAMBDA "LUXLIB_SELU_ALPHA_LAMBDA"

#: number of activation ids implemented (ids 0 .. N_ACTIVATIONS - 1)
cdef enum:
    N_ACTIVATIONS = 26


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




# ---- contiguous runs: what the fused kernels call --------------------------------

cdef inline void act_forward_n(int act, floating p, const floating* z, floating* y,
                               Py_ssize_t n) noexcept nogil:
    """``y[i] = act(z[i])`` for ``i < n``; ``y`` may be ``z``."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = _act(act, z[i], p)


cdef inline void act_backward_n(int act, floating p, const floating* src, const floating* dy,
                                floating* dz, Py_ssize_t n) noexcept nogil:
    """``dz[i] = dy[i] * act'`` for ``i < n``, from ``src`` = the output ``y`` when
    ``_output_only(act)``, else the pre-activation ``z``; ``dz`` may be ``dy``."""
    cdef Py_ssize_t i
    if _output_only(act):
        for i in range(n):
            dz[i] = dy[i] * _dact_from_output(act, src[i], p)
    else:
        for i in range(n):
            dz[i] = dy[i] * _dact_from_input(act, src[i], p)
