"""luxlib: fused neural-network primitives with reverse-mode rules.

The Python counterpart of Julia's LuxLib. Every function runs on NumPy arrays
through Cython/OpenMP kernels where they exist, on CuPy arrays through CUDA
kernels, and on any other array type through a generic broadcasting path.
See ``SPEC.md`` (shipped as ``doc/``) for the contract.
"""

__version__ = "0.1.0"

__all__ = [
    "AbstractInternalArrayOpMode",
    "ConvDims",
    "GPUBroadcastOp",
    "GenericBroadcastOp",
    "LoopedArrayOp",
    "activations",
    "alpha_dropout",
    "backend",
    "batched_matmul",
    "batchnorm",
    "bias_activation",
    "bias_activation_",
    "dropout",
    "empty_memory_cache",
    "fast_activation",
    "fast_activation_",
    "fused_conv_bias_activation",
    "fused_dense_bias_activation",
    "get_memory_cache_limit",
    "get_num_threads",
    "groupnorm",
    "instancenorm",
    "internal_operation_mode",
    "layernorm",
    "set_memory_cache_limit",
    "set_num_threads",
    "show_config",
    "vjp",
    "within_gradient",
]

from . import activations
from ._autodiff import vjp, within_gradient
from ._dispatch import (
    AbstractInternalArrayOpMode,
    GenericBroadcastOp,
    GPUBroadcastOp,
    LoopedArrayOp,
    backend,
    internal_operation_mode,
)
from . import _generic  # noqa: F401  (registers the reference implementations)
from . import _looped  # noqa: F401  (registers the Cython kernels)
from . import cuda  # noqa: F401  (registers the CUDA kernels; never imports CuPy)
from ._config import get_num_threads, set_num_threads, show_config
from ._memory import empty_memory_cache, get_memory_cache_limit, set_memory_cache_limit

# public ops, one module per family
from .api.activation import fast_activation, fast_activation_
from .api.bias_activation import bias_activation, bias_activation_
from .api.batched_matmul import batched_matmul
from .api.dense import fused_dense_bias_activation
from .api.dropout import alpha_dropout, dropout
from .api.conv import ConvDims, fused_conv_bias_activation
from .api.normalization import batchnorm, groupnorm, instancenorm, layernorm
