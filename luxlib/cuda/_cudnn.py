"""cuDNN's convolutions for the GPU path, an opt-in (``LUXLIB_CUDNN=1``) where cuDNN 9 is
installed; never required.

CuPy 14 dropped its cuDNN binding, so this module binds the few C functions it needs with
:mod:`ctypes` (which releases the GIL for each call): tensor, filter and convolution
descriptors, and the legacy ``cudnnConvolutionForward``, ``cudnnConvolutionBackwardData``
and ``cudnnConvolutionBackwardFilter``. torch's convolutions run on the same library, so
this is the way to its kernel times for the convolutions our im2col + gemm path serves.

One :class:`Convolution` per layout (shapes, options, dtype, device; cached) holds the
descriptors and the algorithm of each pass, chosen once by cuDNN's heuristics; a call sets
the handle's stream, allocates the workspace from CuPy's pool and makes one cuDNN call.

- Precision: float32 and float64 use FMA math only (never TF32: luxlib's float32 is
  float32); float16 computes in float32 and may use Tensor Cores, like cuBLAS's float16
  gemm on the im2col path.
- Only deterministic algorithms that sum each output's products directly are taken
  (:data:`DIRECT_ALGORITHMS`: no FFT or Winograd), so results repeat bit for bit and round
  like a gemm, as on the rest of the GPU path. A layout with no such algorithm within
  ``WORKSPACE_BYTES`` of workspace, or that cuDNN refuses, goes to the im2col path.
- The library: ``libcudnn.so.9`` on the loader's path, else in the ``nvidia-cudnn-cu13``
  (or ``-cu12``) wheel's ``nvidia/cudnn/lib`` (what torch installs).
- Off unless ``LUXLIB_CUDNN=1`` is in the environment: on an H200, the algorithms allowed
  above were slower than luxlib's own kernels in the benchmark's layouts (doc/gpu_runs.md,
  session 22); for a 1x1 layer, cuDNN's one such backward-filter algorithm took 4.2 ms, where
  luxlib's whole forward+backward of that layer takes 0.54 ms.
"""

import ctypes
import functools
import importlib.util
import math
import os
import threading

import numpy as np

from .._blas_layout import c_order_steps

__all__ = ["Convolution", "CuDNN", "get_cudnn", "status"]

# cudnn_graph.h / cudnn_ops.h / cudnn_cnn.h (checked against the headers in
# tests/cuda/test_cudnn_binding.py)
STATUS_SUCCESS = 0
DATA_FLOAT, DATA_DOUBLE, DATA_HALF = 0, 1, 2
TENSOR_NCHW = 0
CONVOLUTION, CROSS_CORRELATION = 0, 1
DEFAULT_MATH, TENSOR_OP_MATH, FMA_MATH = 0, 1, 3
DETERMINISTIC = 1
#: per pass, the algorithms that sum the products themselves, as a gemm does: implicit
#: GEMM, GEMM and direct (forward), ALGO_0 and ALGO_1 (backward data), ALGO_0, ALGO_1 and
#: ALGO_3 (backward filter); FFT and Winograd go through transforms, whose rounding is
#: that of the whole tile rather than of each output's products
DIRECT_ALGORITHMS = {"Forward": frozenset({0, 1, 2, 3}), "BackwardData": frozenset({0, 1}),
                     "BackwardFilter": frozenset({0, 1, 3})}

#: the most workspace an algorithm may ask for (the im2col path's budget)
WORKSPACE_BYTES = 256 << 20
#: cuDNN's legacy tensors are indexed in 32 bits: larger arrays take the im2col path
ELEMENTS_LIMIT = 2**31 - 1
#: perf results asked of the heuristics (cuDNN 9 has 8 forward, 6 backward-data and 7
#: backward-filter algorithms)
ALGORITHMS = 8


class Perf(ctypes.Structure):
    """``cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t`` (one layout for the three)."""

    _fields_ = [("algo", ctypes.c_int), ("status", ctypes.c_int), ("time", ctypes.c_float),
                ("memory", ctypes.c_size_t), ("determinism", ctypes.c_int), ("mathType", ctypes.c_int),
                ("reserved", ctypes.c_int * 3)]


_P, _INTS, _INT = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int
_OUT_P, _SIZE, _OUT_SIZE = ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)
_QUERY = [_P, _P, _P, _P, _P, _INT, _INTS, ctypes.POINTER(Perf)]
_RUN = [_P, _P, _P, _P, _P, _P, _P, _INT, _P, _SIZE, _P, _P, _P]

#: the C functions used and their parameter types (each returns a cudnnStatus_t)
SIGNATURES = {
    "cudnnCreate": [_OUT_P],
    "cudnnSetStream": [_P, _P],
    "cudnnCreateTensorDescriptor": [_OUT_P],
    "cudnnDestroyTensorDescriptor": [_P],
    "cudnnSetTensorNdDescriptor": [_P, _INT, _INT, _INTS, _INTS],
    "cudnnCreateFilterDescriptor": [_OUT_P],
    "cudnnDestroyFilterDescriptor": [_P],
    "cudnnSetFilterNdDescriptor": [_P, _INT, _INT, _INT, _INTS],
    "cudnnCreateConvolutionDescriptor": [_OUT_P],
    "cudnnDestroyConvolutionDescriptor": [_P],
    "cudnnSetConvolutionNdDescriptor": [_P, _INT, _INTS, _INTS, _INTS, _INT, _INT],
    "cudnnSetConvolutionGroupCount": [_P, _INT],
    "cudnnSetConvolutionMathType": [_P, _INT],
    "cudnnGetConvolutionNdForwardOutputDim": [_P, _P, _P, _INT, _INTS],
    "cudnnGetConvolutionForwardAlgorithm_v7": _QUERY,
    "cudnnGetConvolutionBackwardDataAlgorithm_v7": _QUERY,
    "cudnnGetConvolutionBackwardFilterAlgorithm_v7": _QUERY,
    "cudnnGetConvolutionForwardWorkspaceSize": [_P, _P, _P, _P, _P, _INT, _OUT_SIZE],
    "cudnnGetConvolutionBackwardDataWorkspaceSize": [_P, _P, _P, _P, _P, _INT, _OUT_SIZE],
    "cudnnGetConvolutionBackwardFilterWorkspaceSize": [_P, _P, _P, _P, _P, _INT, _OUT_SIZE],
    "cudnnConvolutionForward": _RUN,
    "cudnnConvolutionBackwardData": _RUN,
    "cudnnConvolutionBackwardFilter": _RUN,
}

_DATA = {np.dtype(np.float16): DATA_HALF, np.dtype(np.float32): DATA_FLOAT, np.dtype(np.float64): DATA_DOUBLE}


class CuDNNError(RuntimeError):
    """A cuDNN call returned an error status."""


def _ints(values):
    return (ctypes.c_int * len(values))(*values)


def _library_paths():
    yield "libcudnn.so.9"
    spec = importlib.util.find_spec("nvidia.cudnn") if importlib.util.find_spec("nvidia") else None
    for root in (spec.submodule_search_locations or []) if spec else []:
        yield os.path.join(root, "lib", "libcudnn.so.9")


def load_library(paths=None):
    """cuDNN 9 as a :class:`ctypes.CDLL` with :data:`SIGNATURES` declared, or None when it is
    not found (or lacks a function)."""
    for path in _library_paths() if paths is None else paths:
        try:
            lib = ctypes.CDLL(path)
            lib.cudnnGetVersion.restype = ctypes.c_size_t
            if lib.cudnnGetVersion() // 10000 != 9:
                continue
            for name, argtypes in SIGNATURES.items():
                f = getattr(lib, name)
                f.argtypes, f.restype = argtypes, ctypes.c_int
            lib.cudnnGetErrorString.argtypes, lib.cudnnGetErrorString.restype = [ctypes.c_int], ctypes.c_char_p
        except (OSError, AttributeError):
            continue
        return lib
    return None


class _Descriptors:
    """cuDNN descriptors, destroyed with this object."""

    def __init__(self, lib):
        self._lib, self._made = lib, []

    def new(self, kind):
        d = ctypes.c_void_p()
        _check(self._lib, getattr(self._lib, f"cudnnCreate{kind}Descriptor")(ctypes.byref(d)),
               f"cudnnCreate{kind}Descriptor")
        self._made.append((kind, d))
        return d

    def __del__(self):
        for kind, d in self._made:
            getattr(self._lib, f"cudnnDestroy{kind}Descriptor")(d)


def _check(lib, status, fname):
    if status != STATUS_SUCCESS:
        message = lib.cudnnGetErrorString(status)
        message = message.decode() if isinstance(message, bytes) else str(message)
        raise CuDNNError(f"fused_conv_bias_activation: cuDNN's {fname} failed: {message} (status {status})")


def as_nd(cdims, n):
    """``(x dims, w dims, y dims, pads, strides, dilations)`` of ``cdims`` with a batch of
    ``n``, a 1-D convolution as a 2-D one of height 1 (cuDNN takes 2-D and 3-D ones)."""
    lead = (1,) * (cdims.spatial_dims == 1)
    lo = tuple(lo for lo, _ in cdims.padding)
    return ((n, cdims.x_shape[1]) + lead + cdims.x_shape[2:], cdims.w_shape[:2] + lead + cdims.w_shape[2:],
            (n, cdims.w_shape[0]) + lead + cdims.output_shape[2:], (0,) * len(lead) + lo,
            lead + cdims.stride, lead + cdims.dilation)


@functools.lru_cache(maxsize=256)
def _takes(cdims, n, dtype):
    """Whether cuDNN can take the layout: a dtype it has, symmetric padding (cuDNN pads both
    sides of an axis alike), arrays within 32-bit indexing."""
    if dtype not in _DATA or any(lo != hi for lo, hi in cdims.padding):
        return False
    return max(math.prod(dims) for dims in as_nd(cdims, n)[:3]) <= ELEMENTS_LIMIT


class Convolution:
    """The descriptors of one convolution layout (made and checked here, without a GPU) and,
    after :meth:`choose`, each pass's ``(convolution descriptor, algorithm, workspace
    bytes)``: ``fwd``, ``bwd_data`` and ``bwd_filter`` (a convolution descriptor per pass:
    its math type is the chosen algorithm's)."""

    def __init__(self, lib, cdims, n, dtype):
        self._lib, self._data = lib, _DATA[dtype]
        data = self._data
        self.scalar = ctypes.c_double if data == DATA_DOUBLE else ctypes.c_float  # alpha, beta
        self._made = made = _Descriptors(lib)
        xd, wd, yd, pads, strides, dilations = as_nd(cdims, n)
        self.x, self.y, self.w = made.new("Tensor"), made.new("Tensor"), made.new("Filter")
        for desc, dims in ((self.x, xd), (self.y, yd)):
            _check(lib, lib.cudnnSetTensorNdDescriptor(desc, data, len(dims), _ints(dims),
                                                       _ints(c_order_steps(dims))),
                   "cudnnSetTensorNdDescriptor")
        _check(lib, lib.cudnnSetFilterNdDescriptor(self.w, data, TENSOR_NCHW, len(wd), _ints(wd)),
               "cudnnSetFilterNdDescriptor")
        mode = CROSS_CORRELATION if cdims.cross_correlation else CONVOLUTION
        compute = DATA_DOUBLE if data == DATA_DOUBLE else DATA_FLOAT
        math_type = TENSOR_OP_MATH if data == DATA_HALF else FMA_MATH
        self.convs = []
        for _ in range(3):
            c = made.new("Convolution")
            _check(lib, lib.cudnnSetConvolutionNdDescriptor(c, len(pads), _ints(pads), _ints(strides),
                                                            _ints(dilations), mode, compute),
                   "cudnnSetConvolutionNdDescriptor")
            _check(lib, lib.cudnnSetConvolutionGroupCount(c, cdims.groups), "cudnnSetConvolutionGroupCount")
            _check(lib, lib.cudnnSetConvolutionMathType(c, math_type), "cudnnSetConvolutionMathType")
            self.convs.append(c)
        out = _ints(yd)
        _check(lib, lib.cudnnGetConvolutionNdForwardOutputDim(self.convs[0], self.x, self.w, len(yd), out),
               "cudnnGetConvolutionNdForwardOutputDim")
        if tuple(out) != yd:  # cuDNN reads the layout otherwise than luxlib: never run it
            raise CuDNNError(f"fused_conv_bias_activation: cuDNN's output shape {tuple(out)} for {cdims} is not {yd}")

    def choose(self, handle):
        """Choose each pass's algorithm on ``handle``'s device; returns self."""
        fwd, data, filt = self.convs
        # each pass's descriptors in the order its cuDNN functions take them
        self.fwd = self._choose(handle, "Forward", self.x, self.w, fwd, self.y)
        self.bwd_data = self._choose(handle, "BackwardData", self.w, self.y, data, self.x)
        self.bwd_filter = self._choose(handle, "BackwardFilter", self.x, self.y, filt, self.w)
        return self

    def _choose(self, handle, kind, a, b, conv, out):
        """``(conv, algorithm, workspace bytes)``: the heuristics' first deterministic
        algorithm of :data:`DIRECT_ALGORITHMS` within the workspace budget (without Tensor
        Cores in float32 and float64)."""
        lib, data = self._lib, self._data
        operands = (a, b, conv, out)
        perf, count = (Perf * ALGORITHMS)(), ctypes.c_int()
        name = f"cudnnGetConvolution{kind}Algorithm_v7"
        _check(lib, getattr(lib, name)(handle, *operands, ALGORITHMS, ctypes.byref(count), perf), name)
        allowed = (DEFAULT_MATH, TENSOR_OP_MATH, FMA_MATH) if data == DATA_HALF else (DEFAULT_MATH, FMA_MATH)
        size = ctypes.c_size_t()
        for p in perf[:count.value]:
            if (p.status != STATUS_SUCCESS or p.determinism != DETERMINISTIC or p.mathType not in allowed
                    or p.algo not in DIRECT_ALGORITHMS[kind]):
                continue
            if getattr(lib, f"cudnnGetConvolution{kind}WorkspaceSize")(handle, *operands, p.algo,
                                                                      ctypes.byref(size)) != STATUS_SUCCESS:
                continue
            if max(size.value, p.memory) <= WORKSPACE_BYTES:
                if data == DATA_HALF:  # the math type the algorithm was ranked with
                    _check(lib, lib.cudnnSetConvolutionMathType(conv, p.mathType), "cudnnSetConvolutionMathType")
                return conv, p.algo, max(size.value, p.memory)
        raise CuDNNError(f"fused_conv_bias_activation: cuDNN has no deterministic {kind} algorithm for this layout")


class CuDNN:
    """cuDNN's convolutions on CuPy arrays (the process's one: :func:`get_cudnn`). Handles
    are made per thread and device, as cuDNN asks."""

    def __init__(self, lib):
        self._lib = lib
        self._local = threading.local()

    def _handle(self, cupy):
        """This thread's handle on the current device, on the current stream."""
        handles = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
        device = cupy.cuda.runtime.getDevice()
        handle = handles.get(device)
        if handle is None:
            handle = ctypes.c_void_p()
            _check(self._lib, self._lib.cudnnCreate(ctypes.byref(handle)), "cudnnCreate")
            handles[device] = handle
        _check(self._lib, self._lib.cudnnSetStream(handle, cupy.cuda.get_current_stream().ptr), "cudnnSetStream")
        return handle

    def convolution(self, cdims, n, dtype):
        """The :class:`Convolution` of ``cdims`` with a batch of ``n`` in ``dtype``, or None
        when cuDNN does not take it (the caller uses its own kernels)."""
        if not _takes(cdims, n, dtype):
            return None
        import cupy  # only reached with CuPy arrays

        return self._convolution(cdims, n, dtype, cupy.cuda.runtime.getDevice())

    @functools.lru_cache(maxsize=256)  # noqa: B019 (one CuDNN per process)
    def _convolution(self, cdims, n, dtype, device):
        import cupy

        try:
            return Convolution(self._lib, cdims, n, dtype).choose(self._handle(cupy))
        except CuDNNError:
            return None

    def _run(self, kind, conv_pass, scalar, a_desc, a, b_desc, b, out_desc, out):
        import cupy

        desc, algo, workspace = conv_pass
        ws = cupy.empty(workspace, np.uint8) if workspace else None
        one, zero = scalar(1.0), scalar(0.0)
        name = f"cudnnConvolution{kind}"
        _check(self._lib, getattr(self._lib, name)(
            self._handle(cupy), ctypes.byref(one), a_desc, a.data.ptr, b_desc, b.data.ptr, desc, algo,
            None if ws is None else ws.data.ptr, workspace, ctypes.byref(zero), out_desc, out.data.ptr,
        ), name)
        return out

    def forward(self, conv, x, w, y):
        """``y = conv(x, w)``: C-contiguous arrays of the layout's shapes; returns ``y``."""
        return self._run("Forward", conv.fwd, conv.scalar, conv.x, x, conv.w, w, conv.y, y)

    def backward_data(self, conv, w, dy, dx):
        """``dx``, the gradient of the input for the output gradient ``dy``; returns ``dx``."""
        return self._run("BackwardData", conv.bwd_data, conv.scalar, conv.w, w, conv.y, dy, conv.x, dx)

    def backward_filter(self, conv, x, dy, dw):
        """``dw``, the gradient of the weight for the output gradient ``dy``; returns ``dw``."""
        return self._run("BackwardFilter", conv.bwd_filter, conv.scalar, conv.x, x, conv.y, dy, conv.w, dw)


_CUDNN = []


def _enabled():
    return os.environ.get("LUXLIB_CUDNN", "0") == "1"


def get_cudnn():
    """The process's :class:`CuDNN` with ``LUXLIB_CUDNN=1`` in the environment and cuDNN 9
    installed; else None (the convolutions run on luxlib's kernels)."""
    if not _CUDNN:
        lib = load_library() if _enabled() else None
        _CUDNN.append(None if lib is None else CuDNN(lib))
    return _CUDNN[0]


def status():
    """One line for :func:`luxlib.show_config`: whether the GPU convolutions use cuDNN."""
    dnn = get_cudnn()
    if dnn is not None:
        v = dnn._lib.cudnnGetVersion()
        return f"cuDNN {v // 10000}.{v // 100 % 100}.{v % 100} ({dnn._lib._name}): GPU convolutions"
    if not _enabled():
        return "off (LUXLIB_CUDNN=1 turns it on): GPU convolutions on luxlib's kernels"
    return "cuDNN 9 not found (pip install nvidia-cudnn-cu13): GPU convolutions on luxlib's kernels"
