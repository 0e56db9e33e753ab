"""The CUDA path (GPUBroadcastOp): CuPy RawKernels of our own, for CuPy arrays.

Importing this package registers the GPU implementations; it never imports CuPy
(the kernels are compiled on first use, which only happens for CuPy arrays, whose
owner has CuPy). Families so far: fast_activation/bias_activation (and the in-place
variants), dropout, alpha_dropout, batchnorm/groupnorm/instancenorm/layernorm,
fused_dense_bias_activation, batched_matmul, fused_conv_bias_activation (on cuDNN when it is
installed, else on kernels of our own). See doc/cuda.md.
"""

from .._dispatch import register, set_gpu_run
from . import _bias_activation, _conv, _dense, _device, _dropout, _matmul, _normalization
from ._blas import get_blas
from ._cudnn import get_cudnn
from ._modules import FAMILIES, get_module

__all__ = ["FAMILIES", "get_module"]

set_gpu_run(_device.run)  # each call on the GPU that holds its arrays


def _mod(family):
    """The kernels of ``family``, cuBLAS for ``"blas"``, cuDNN (or None) for ``"cudnn"``."""
    if family == "blas":
        return get_blas()
    return get_cudnn() if family == "cudnn" else get_module(family)


def _fast_forward(act, x):
    return _bias_activation.forward(_mod("bias_activation"), act, x)


def _fast_vjp(act, x):
    y, pb = _bias_activation.vjp(_mod("bias_activation"), act, x)
    return y, lambda dy: {"x": pb(dy)["x"]}


def _bias_forward(act, x, bias):
    return _bias_activation.forward(_mod("bias_activation"), act, x, bias)


def _bias_vjp(act, x, bias):
    return _bias_activation.vjp(_mod("bias_activation"), act, x, bias)


for _op in ("fast_activation", "fast_activation_"):
    register(_op, "gpu", forward=_fast_forward, vjp=_fast_vjp, supports=_bias_activation.supports)
for _op in ("bias_activation", "bias_activation_"):
    register(_op, "gpu", forward=_bias_forward, vjp=_bias_vjp, supports=_bias_activation.supports)


def _dropout_vjp(**kw):
    return _dropout.dropout_vjp(_mod("dropout"), **kw)


def _alpha_forward(**kw):
    return _dropout.alpha_dropout_forward(_mod("dropout"), **kw)


def _alpha_vjp(**kw):
    return _dropout.alpha_dropout_vjp(_mod("dropout"), **kw)


register("dropout", "gpu", forward=lambda **kw: _dropout_vjp(**kw)[0], vjp=_dropout_vjp,
         supports=_dropout.supports)
register("alpha_dropout", "gpu", forward=_alpha_forward, vjp=_alpha_vjp, supports=_dropout.supports)


def _norm(op, with_vjp):
    return lambda **kw: _normalization.OPS[op](_mod("normalization"), with_vjp, **kw)


for _op in _normalization.OPS:
    register(_op, "gpu", forward=_norm(_op, False), vjp=_norm(_op, True), supports=_normalization.SUPPORTS[_op])


def _with_modules(f, *families):
    """``f(*modules, **kw)`` as an implementation taking ``**kw`` (modules compiled on use)."""
    return lambda **kw: f(*(_mod(family) for family in families), **kw)


register("fused_dense_bias_activation", "gpu", forward=_with_modules(_dense.forward, "bias_activation", "blas"),
         vjp=_with_modules(_dense.vjp, "bias_activation", "blas"), supports=_dense.supports)
register("batched_matmul", "gpu", forward=_with_modules(_matmul.forward, "blas"),
         vjp=_with_modules(_matmul.vjp, "blas"), supports=_matmul.supports)


def _conv_with(f):
    return lambda **kw: f(_mod("conv"), _mod("bias_activation"), _mod("blas"), dnn=_mod("cudnn"), **kw)


register("fused_conv_bias_activation", "gpu", forward=_conv_with(_conv.forward), vjp=_conv_with(_conv.vjp),
         supports=_conv.supports)
