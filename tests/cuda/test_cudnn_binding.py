"""``luxlib.cuda._cudnn`` without a GPU.

- Against cuDNN's headers (the ``nvidia-cudnn-cu13`` wheel; skipped without it): every
  bound function's parameter types, the constants, and the layout of the perf struct,
  the last two as gcc compiles them.
- Against the real library (no GPU needed for descriptors): every layout's descriptors,
  read back from cuDNN, and cuDNN's own output shape.
- Against a stand-in library with cuDNN's C functions over NumPy memory (``_StandIn``):
  the algorithm choice, the arguments of every call (descriptors, pointers, alpha and
  beta, workspace) and the results of the cuDNN plans of ``_conv`` against the generic
  path, forward and reverse, through the emulated epilogue kernels.
What only a GPU shows (cuDNN's kernels, its heuristics) is in test_gpu_dense_conv.py.
"""

import ctypes
import gc
import glob
import os
import re
import shutil
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
from device_memory import Memory
from test_emu_dense_conv import BLAS, CONV_CASES, TOL, emu, reference

import luxlib
from luxlib import _dispatch, activations
from luxlib.cuda import _conv, _cudnn

STREAM = 0x5EED
#: the layouts that go to cuDNN (symmetric padding, not depthwise: that has kernels of
#: its own), every option, 1-D to 3-D
CUDNN_CASES = [case for case in CONV_CASES
               if all(lo == hi for lo, hi in luxlib.ConvDims(*case[:2], **case[2]).padding)
               and not case[2].get("groups", 1) == case[0][1] > 1]
DTYPES = [np.float16, np.float32, np.float64]


def _include_dir():
    try:
        import nvidia.cudnn
    except ImportError:
        return None
    for root in nvidia.cudnn.__path__:
        if os.path.exists(os.path.join(root, "include", "cudnn_cnn.h")):
            return os.path.join(root, "include")
    return None


def test_the_cases_cover_every_option():
    dims = [luxlib.ConvDims(*case[:2], **case[2]) for case in CUDNN_CASES]
    assert {d.spatial_dims for d in dims} == {1, 2, 3}
    assert any(d.groups > 1 for d in dims) and any(d.flipkernel for d in dims)
    assert any(max(d.stride) > 1 for d in dims) and any(max(d.dilation) > 1 for d in dims)
    assert any(d.padding[0][0] > 0 for d in dims)


# ---- the headers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def headers():
    include = _include_dir()
    if include is None:
        pytest.skip("cuDNN's headers are not installed (pip install nvidia-cudnn-cu13)")
    text = ""
    for path in sorted(glob.glob(os.path.join(include, "cudnn_*.h"))):
        if not path.endswith("_v9.h"):
            with open(path) as f:
                text += f.read()
    return include, re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def _ctype(param):
    """The ctypes type of a C parameter declaration, as cuDNN's ABI passes it."""
    param = re.sub(r"\bconst\b", " ", param).strip()
    m = re.fullmatch(r"(\w+)\s*(\**)\s*\w*\s*(\[\])?", param)
    assert m, param
    base, depth = m.group(1), len(m.group(2)) + bool(m.group(3))
    if base == "void" and depth == 1:
        return ctypes.c_void_p
    if base in ("cudnnHandle_t", "cudaStream_t") or base.endswith("Descriptor_t"):
        value, depth = ctypes.c_void_p, depth  # opaque pointers
    elif base == "size_t":
        value = ctypes.c_size_t
    elif base.endswith("AlgoPerf_t"):
        value = _cudnn.Perf
    elif base == "int" or (base.startswith("cudnn") and base.endswith("_t")):  # enums are ints
        value = ctypes.c_int
    else:
        raise AssertionError(f"unexpected parameter {param!r}")
    for _ in range(depth):
        value = ctypes.POINTER(value)
    return value


@pytest.mark.parametrize("name", sorted(_cudnn.SIGNATURES))
def test_signatures_match_the_headers(headers, name):
    m = re.search(r"cudnnStatus_t\s+CUDNNWINAPI\s+" + name + r"\s*\(([^;]*?)\)\s*;", headers[1])
    assert m, f"{name} is not declared as returning cudnnStatus_t"
    params = [p.strip() for p in m.group(1).split(",")]
    assert [_ctype(p) for p in params] == _cudnn.SIGNATURES[name], params


#: luxlib's constants and the algorithms of DIRECT_ALGORITHMS by their names in the headers
_CONSTANTS = {name: f"CUDNN_{name}" for name in ("STATUS_SUCCESS", "DATA_FLOAT", "DATA_DOUBLE", "DATA_HALF",
                                                 "TENSOR_NCHW", "CONVOLUTION", "CROSS_CORRELATION",
                                                 "DEFAULT_MATH", "TENSOR_OP_MATH", "FMA_MATH", "DETERMINISTIC")}
_DIRECT = {"Forward": ["FWD_ALGO_IMPLICIT_GEMM", "FWD_ALGO_IMPLICIT_PRECOMP_GEMM", "FWD_ALGO_GEMM",
                       "FWD_ALGO_DIRECT"],
           "BackwardData": ["BWD_DATA_ALGO_0", "BWD_DATA_ALGO_1"],
           "BackwardFilter": ["BWD_FILTER_ALGO_0", "BWD_FILTER_ALGO_1", "BWD_FILTER_ALGO_3"]}
_PERFS = ["cudnnConvolutionFwdAlgoPerf_t", "cudnnConvolutionBwdDataAlgoPerf_t", "cudnnConvolutionBwdFilterAlgoPerf_t"]


def test_constants_and_struct_layout_as_compiled(headers, tmp_path):
    """gcc compiles the headers (with the two CUDA runtime types they use stubbed) and
    prints the constants and each perf struct's size and field offsets."""
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    include, _ = headers
    (tmp_path / "cuda_runtime_api.h").write_text(
        "typedef struct CUstream_st *cudaStream_t;\ntypedef struct CUgraph_st *cudaGraph_t;\n")
    import luxlib_nvrtc  # the CUDA headers' directory (library_types.h)

    names = list(_CONSTANTS.values()) + [f"CUDNN_CONVOLUTION_{a}" for algos in _DIRECT.values() for a in algos]
    lines = [f'printf("%d\\n", (int){n});' for n in names]
    for perf in _PERFS:
        lines.append(f'printf("%zu\\n", sizeof({perf}));')
        lines += [f'printf("%zu\\n", offsetof({perf}, {f}));' for f, _ in _cudnn.Perf._fields_]
    (tmp_path / "probe.c").write_text(
        "#include <stdio.h>\n#include <stddef.h>\n#include <cudnn_cnn.h>\nint main(void) {\n"
        + "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run(["gcc", "-Wall", "-Werror", "-Wno-deprecated-declarations", f"-I{tmp_path}", f"-I{include}",
                    f"-I{luxlib_nvrtc.cuda_include_dir()}", str(tmp_path / "probe.c"), "-o", str(tmp_path / "probe")],
                   check=True)
    out = [int(v) for v in subprocess.run([str(tmp_path / "probe")], check=True, capture_output=True,
                                          text=True).stdout.split()]
    got_constants = dict(zip(names, out))
    for ours, theirs in _CONSTANTS.items():
        assert getattr(_cudnn, ours) == got_constants[theirs], ours
    for kind, algos in _DIRECT.items():
        assert _cudnn.DIRECT_ALGORITHMS[kind] == {got_constants[f"CUDNN_CONVOLUTION_{a}"] for a in algos}, kind
    layout = [ctypes.sizeof(_cudnn.Perf)] + [getattr(_cudnn.Perf, f).offset for f, _ in _cudnn.Perf._fields_]
    rest = out[len(names):]
    for i, perf in enumerate(_PERFS):
        assert rest[i * len(layout):(i + 1) * len(layout)] == layout, perf


# ---- the real library, descriptors only ---------------------------------------------------

@pytest.fixture(scope="module")
def lib():
    lib = _cudnn.load_library()
    if lib is None:
        pytest.skip("cuDNN 9 is not installed (pip install nvidia-cudnn-cu13)")
    _P, _I = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)
    for name, argtypes in (("cudnnGetTensorNdDescriptor", [_P, ctypes.c_int, _I, _I, _I, _I]),
                           ("cudnnGetFilterNdDescriptor", [_P, ctypes.c_int, _I, _I, _I, _I]),
                           ("cudnnGetConvolutionNdDescriptor", [_P, ctypes.c_int, _I, _I, _I, _I, _I, _I]),
                           ("cudnnGetConvolutionGroupCount", [_P, _I]),
                           ("cudnnGetConvolutionMathType", [_P, _I])):
        getattr(lib, name).argtypes = argtypes
    return lib


def _ints(n):
    return (ctypes.c_int * n)()


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CUDNN_CASES, ids=str)
def test_descriptors_read_back_from_cudnn(lib, case, dtype):
    """cuDNN holds the layout luxlib means, and agrees on the output shape (checked when a
    :class:`Convolution` is made: it raises otherwise)."""
    cdims = luxlib.ConvDims(*case[:2], **case[2])
    n = 3  # not cdims' batch: a ConvDims serves every batch size
    conv = _cudnn.Convolution(lib, cdims, n, np.dtype(dtype))
    xd, wd, yd, pads, strides, dilations = _cudnn.as_nd(cdims, n)
    assert len(xd) == len(wd) == len(yd) == max(4, cdims.spatial_dims + 2)  # cuDNN convolves 4-D and 5-D
    data = {np.float16: _cudnn.DATA_HALF, np.float32: _cudnn.DATA_FLOAT, np.float64: _cudnn.DATA_DOUBLE}[dtype]
    for desc, dims in ((conv.x, xd), (conv.y, yd)):
        t, nb, got, strides_got = ctypes.c_int(), ctypes.c_int(), _ints(8), _ints(8)
        assert lib.cudnnGetTensorNdDescriptor(desc, 8, ctypes.byref(t), ctypes.byref(nb), got, strides_got) == 0
        assert (t.value, tuple(got[:nb.value])) == (data, dims)
        assert tuple(strides_got[:nb.value]) == tuple(np.empty(dims, np.int8).strides)
    t, fmt, nb, got = ctypes.c_int(), ctypes.c_int(), ctypes.c_int(), _ints(8)
    assert lib.cudnnGetFilterNdDescriptor(conv.w, 8, ctypes.byref(t), ctypes.byref(fmt), ctypes.byref(nb), got) == 0
    assert (t.value, fmt.value, tuple(got[:nb.value])) == (data, _cudnn.TENSOR_NCHW, wd)
    for c in conv.convs:
        nb, p, s, d, mode, compute = ctypes.c_int(), _ints(3), _ints(3), _ints(3), ctypes.c_int(), ctypes.c_int()
        assert lib.cudnnGetConvolutionNdDescriptor(c, 3, ctypes.byref(nb), p, s, d, ctypes.byref(mode),
                                                   ctypes.byref(compute)) == 0
        assert (tuple(p[:nb.value]), tuple(s[:nb.value]), tuple(d[:nb.value])) == (pads, strides, dilations)
        assert mode.value == (_cudnn.CROSS_CORRELATION if cdims.cross_correlation else _cudnn.CONVOLUTION)
        assert compute.value == (_cudnn.DATA_DOUBLE if dtype == np.float64 else _cudnn.DATA_FLOAT)
        groups, math_type = ctypes.c_int(), ctypes.c_int()
        assert lib.cudnnGetConvolutionGroupCount(c, ctypes.byref(groups)) == 0 and groups.value == cdims.groups
        assert lib.cudnnGetConvolutionMathType(c, ctypes.byref(math_type)) == 0
        assert math_type.value == (_cudnn.TENSOR_OP_MATH if dtype == np.float16 else _cudnn.FMA_MATH)


def test_cudnn_declines_what_it_cannot_take(lib):
    """Asymmetric padding (cuDNN pads both sides alike) and float128-like dtypes go to the
    im2col path, decided before any GPU call."""
    dnn = _cudnn.CuDNN(lib)
    asym = luxlib.ConvDims((1, 2, 4, 4), (2, 2, 2, 2), padding="same")
    assert asym.padding[0][0] != asym.padding[0][1]
    assert dnn.convolution(asym, 1, np.dtype(np.float32)) is None
    sym = luxlib.ConvDims((1, 2, 4, 4), (2, 2, 3, 3), padding=1)
    assert dnn.convolution(sym, 1, np.dtype(np.int32)) is None


# ---- a stand-in library: the calls and their results ---------------------------------------

class _StandIn:
    """cuDNN's C functions over :class:`Memory`, each a ctypes callback with the parameter
    types of ``_cudnn.SIGNATURES``: luxlib's arguments go through the conversions of a call
    into the real library, and arrive as C would see them (addresses, pointers). Descriptors
    are dicts, the heuristics return ``ranking`` (``(algo, status, determinism, math type,
    workspace bytes)`` entries), the convolutions run luxlib's generic path."""

    def __init__(self, memory, ranking):
        self.memory, self.ranking, self.objects, self.calls = memory, ranking, {}, []
        self.destroyed, self.errors = set(), []
        self.fail = None  # a function name that returns an error status
        self.handles = []
        functions = {"cudnnCreate": self._create_handle}
        for kind in ("Tensor", "Filter", "Convolution"):
            functions[f"cudnnCreate{kind}Descriptor"] = self._creator(kind)
            functions[f"cudnnDestroy{kind}Descriptor"] = self._destroy
        for kind in ("Forward", "BackwardData", "BackwardFilter"):
            functions[f"cudnnGetConvolution{kind}Algorithm_v7"] = self._heuristics
            functions[f"cudnnGetConvolution{kind}WorkspaceSize"] = self._workspace_size
            functions[f"cudnnConvolution{kind}"] = self._run(kind)
        for name, argtypes in _cudnn.SIGNATURES.items():
            f = functions.get(name) or getattr(self, "_" + name)
            setattr(self, name, ctypes.CFUNCTYPE(ctypes.c_int, *argtypes)(self._guard(f)))
        assert all(hasattr(self, name) for name in _cudnn.SIGNATURES)

    def _guard(self, f):
        """An assertion inside a callback cannot reach the caller: record it, return an error."""
        def call(*args):
            try:
                return f(*args)
            except Exception as exc:  # noqa: BLE001 (re-raised by the stand_in fixture)
                self.errors.append(exc)
                return 1001
        return call

    def _new(self, out, obj):
        key = 0x1000 + 16 * len(self.objects)
        self.objects[key] = obj
        out[0] = key
        return 0

    def _creator(self, kind):
        return lambda out: self._new(out, {"kind": kind})

    def _destroy(self, d):
        assert d in self.objects and d not in self.destroyed
        self.destroyed.add(d)
        return 0

    def get(self, d, kind):
        """The object behind the descriptor or handle at address ``d``, of ``kind``."""
        assert d in self.objects and d not in self.destroyed, d
        obj = self.objects[d]
        assert obj["kind"] == kind
        return obj

    def cudnnGetErrorString(self, status):
        return b"CUDNN_STATUS_STAND_IN"

    def _create_handle(self, out):
        self.handles.append(threading.get_ident())
        return self._new(out, {"kind": "Handle", "stream": None})

    def _cudnnSetStream(self, handle, stream):
        self.get(handle, "Handle")["stream"] = stream
        return 0

    def _cudnnSetTensorNdDescriptor(self, d, data, nb, dims, strides):
        self.get(d, "Tensor").update(data=data, dims=tuple(dims[:nb]), strides=tuple(strides[:nb]))
        return 0

    def _cudnnSetFilterNdDescriptor(self, d, data, fmt, nb, dims):
        assert fmt == _cudnn.TENSOR_NCHW
        self.get(d, "Filter").update(data=data, dims=tuple(dims[:nb]))
        return 0

    def _cudnnSetConvolutionNdDescriptor(self, d, n, pads, strides, dilations, mode, compute):
        self.get(d, "Convolution").update(pads=tuple(pads[:n]), strides=tuple(strides[:n]),
                                          dilations=tuple(dilations[:n]), mode=mode, compute=compute)
        return 0

    def _cudnnSetConvolutionGroupCount(self, d, groups):
        self.get(d, "Convolution")["groups"] = groups
        return 0

    def _cudnnSetConvolutionMathType(self, d, math_type):
        self.get(d, "Convolution")["math"] = math_type
        return 0

    def cdims(self, x, w, c):
        """The ConvDims the descriptors describe."""
        x, w, c = self.get(x, "Tensor"), self.get(w, "Filter"), self.get(c, "Convolution")
        assert x["data"] == w["data"] and x["strides"] == tuple(np.empty(x["dims"], np.int8).strides)
        return luxlib.ConvDims(x["dims"], w["dims"], stride=c["strides"], padding=c["pads"],
                               dilation=c["dilations"], groups=c["groups"],
                               cross_correlation=c["mode"] == _cudnn.CROSS_CORRELATION)

    def _cudnnGetConvolutionNdForwardOutputDim(self, c, x, w, nb, out):
        dims = self.cdims(x, w, c).output_shape
        assert nb == len(dims)
        for i, d in enumerate(dims):
            out[i] = d
        return 0

    def _heuristics(self, handle, a, b, c, d, requested, count, perf):
        self.get(handle, "Handle")
        assert requested == _cudnn.ALGORITHMS and len(self.ranking) <= requested
        for i, (algo, status, det, math_type, memory) in enumerate(self.ranking):
            perf[i].algo, perf[i].status, perf[i].determinism = algo, status, det
            perf[i].mathType, perf[i].memory = math_type, memory
        count[0] = len(self.ranking)
        return 0

    def workspace(self, algo, conv):
        """The ranking's workspace of ``algo`` with the math type set on ``conv`` (an
        algorithm may be ranked once per math type), else its first entry's."""
        math_type = self.get(conv, "Convolution")["math"]
        same = [r[4] for r in self.ranking if r[0] == algo and r[3] == math_type]
        return (same or [r[4] for r in self.ranking if r[0] == algo])[0]

    def _workspace_size(self, handle, a, b, c, d, algo, out):
        out[0] = self.workspace(algo, c)
        return 0

    def _run(self, kind):
        dtypes = {_cudnn.DATA_HALF: np.float16, _cudnn.DATA_FLOAT: np.float32, _cudnn.DATA_DOUBLE: np.float64}

        def run(handle, alpha, a_desc, a, b_desc, b, c, algo, ws, ws_size, beta, out_desc, out):
            name = f"cudnnConvolution{kind}"
            if self.fail == name:
                return 8
            assert self.get(handle, "Handle")["stream"] == STREAM
            if kind == "Forward":
                x_desc, w_desc, y_desc = a_desc, b_desc, out_desc
            elif kind == "BackwardData":
                w_desc, y_desc, x_desc = a_desc, b_desc, out_desc
            else:
                x_desc, y_desc, w_desc = a_desc, b_desc, out_desc
            cdims = self.cdims(x_desc, w_desc, c)
            dtype = dtypes[self.get(x_desc, "Tensor")["data"]]
            # alpha and beta point at host scalars of the compute type
            scalar = ctypes.c_double if dtype == np.float64 else ctypes.c_float
            assert (scalar.from_address(alpha).value, scalar.from_address(beta).value) == (1.0, 0.0)
            assert self.get(y_desc, "Tensor")["dims"] == cdims.output_shape
            assert ws_size == self.workspace(algo, c)
            assert (ws is None) == (ws_size == 0)
            if ws is not None:
                assert self.memory.at(ws, np.uint8).size >= ws_size
            self.calls.append((kind, algo, np.dtype(dtype).name, self.get(c, "Convolution")["math"]))

            def array(ptr, shape):
                return self.memory.at(ptr, dtype)[:int(np.prod(shape))].reshape(shape).astype(np.float64)

            shapes = {"Forward": (cdims.x_shape, cdims.w_shape), "BackwardData": (cdims.w_shape, cdims.output_shape),
                      "BackwardFilter": (cdims.x_shape, cdims.output_shape)}[kind]
            u, v = array(a, shapes[0]), array(b, shapes[1])
            with luxlib.backend("generic"):
                if kind == "Forward":
                    result = luxlib.fused_conv_bias_activation(None, v, u, None, cdims)
                elif kind == "BackwardData":
                    x0 = np.zeros(cdims.x_shape)
                    result = luxlib.vjp(luxlib.fused_conv_bias_activation, None, u, x0, None, cdims)[1](v)[2]
                else:
                    w0 = np.zeros(cdims.w_shape)
                    result = luxlib.vjp(luxlib.fused_conv_bias_activation, None, w0, u, None, cdims)[1](v)[1]
            self.memory.at(out, dtype)[:result.size] = result.astype(dtype).reshape(-1)
            return 0

        return run


#: a ranking the choice must read through: a non-deterministic algorithm, a failed one, a
#: Winograd one, one with Tensor Cores (float16 only), one over the workspace budget, then
#: plain implicit GEMM with 64 bytes of workspace (0, not ranked first by any of the others)
RANKING = [(1, 0, 0, 0, 0), (3, 9, 1, 0, 0), (7, 0, 1, 0, 0), (1, 0, 1, _cudnn.TENSOR_OP_MATH, 32),
           (3, 0, 1, 0, _cudnn.WORKSPACE_BYTES + 1), (0, 0, 1, _cudnn.FMA_MATH, 64)]


@pytest.fixture
def stand_in(monkeypatch):
    """``(CuDNN over a _StandIn, the stand-in)`` with a stand-in ``cupy`` module installed."""
    memory = Memory()
    cupy = types.ModuleType("cupy")
    cupy.empty = lambda shape, dtype: memory.new(np.empty(shape, dtype))
    cupy.ascontiguousarray = lambda a: memory.new(np.ascontiguousarray(a))
    cupy.asarray = lambda a, dtype=None: a if dtype in (None, a.dtype) else memory.new(a.astype(dtype))
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0),
                                      get_current_stream=lambda: types.SimpleNamespace(ptr=STREAM))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    lib = _StandIn(memory, RANKING)
    yield _cudnn.CuDNN(lib), lib
    if lib.errors:  # a check inside a stand-in function failed
        raise lib.errors[0]


def _expected_algorithm(dtype):
    # float16 may take the Tensor Core algorithm ranked before the FMA one
    return (1, _cudnn.TENSOR_OP_MATH) if dtype == np.float16 else (0, _cudnn.FMA_MATH)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CUDNN_CASES, ids=str)
def test_cudnn_plans_match_generic(stand_in, case, dtype):
    """``_conv``'s forward and pullback through cuDNN (the stand-in's calls checked as they
    come) and the emulated epilogue kernels, against the generic path."""
    dnn, lib = stand_in
    memory = lib.memory
    x_shape, w_shape, options = case
    rng = np.random.default_rng(7)
    cdims = luxlib.ConvDims(x_shape, w_shape, **options)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b, dy = rng.standard_normal(w_shape[0]).astype(dtype), rng.standard_normal(cdims.output_shape).astype(dtype)
    mods = emu("conv"), emu("bias_activation")
    for act in (activations.identity, activations.tanh):
        y_ref, g_ref = reference(luxlib.fused_conv_bias_activation, (act, w, x, b, cdims), dy)
        args = (act, memory.new(w), memory.new(x), memory.new(b), cdims)
        lib.calls.clear()
        assert isinstance(_conv._plan(mods[0], BLAS, args[1], args[2], cdims, dnn), _conv._CuDNN)
        y_fwd = _conv.forward(*mods, BLAS, *args, dnn=dnn)
        y, pullback = _conv.vjp(*mods, BLAS, *args, dnn=dnn)
        grads = pullback(memory.new(dy))
        algo, math_type = _expected_algorithm(dtype)
        name = np.dtype(dtype).name
        assert lib.calls == [("Forward", algo, name, math_type)] * 2 + [
            ("BackwardData", algo, name, math_type), ("BackwardFilter", algo, name, math_type)]
        np.testing.assert_array_equal(y_fwd, y)
        for got, want, what in ((y, y_ref, "y"), (grads["weight"], g_ref[1], "dweight"),
                                (grads["x"], g_ref[2], "dx"), (grads["bias"], g_ref[3], "dbias")):
            assert got.shape == want.shape and got.dtype == dtype, what
            err = np.max(np.abs(np.asarray(got, np.float64) - want))
            assert err <= TOL[dtype] * (1 + np.max(np.abs(want))), (what, err)


def test_the_registry_passes_cudnn(stand_in, monkeypatch):
    """The public function, dispatched to the registered GPU implementation, reaches cuDNN
    (``luxlib.cuda._mod("cudnn")``), forward and reverse."""
    dnn, lib = stand_in
    stand_ins = {"blas": BLAS, "cudnn": dnn}
    monkeypatch.setattr(_dispatch, "_kind", lambda arrays: "gpu")
    monkeypatch.setattr(_dispatch, "_GPU_RUN", [_dispatch._run_here])  # NumPy arrays are on no GPU
    monkeypatch.setattr(luxlib.cuda, "_mod", lambda family: stand_ins.get(family) or emu(family))
    cdims = luxlib.ConvDims((2, 2, 5, 5), (3, 2, 3, 3), padding=1)
    rng = np.random.default_rng(3)
    x, w, b, dy = (rng.standard_normal(shape) for shape in (cdims.x_shape, cdims.w_shape, (3,), cdims.output_shape))
    y_ref, g_ref = reference(luxlib.fused_conv_bias_activation, ("relu", w, x, b, cdims), dy)
    y, pullback = luxlib.vjp(luxlib.fused_conv_bias_activation, "relu", *map(lib.memory.new, (w, x, b)), cdims)
    grads = pullback(lib.memory.new(dy))
    assert [call[0] for call in lib.calls] == ["Forward", "BackwardData", "BackwardFilter"]
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-12, atol=1e-12)
    for i in (1, 2, 3):
        np.testing.assert_allclose(np.asarray(grads[i]), g_ref[i], rtol=1e-12, atol=1e-12)


def test_no_acceptable_algorithm_means_im2col(stand_in):
    dnn, lib = stand_in
    lib.ranking = RANKING[:3] + RANKING[4:5]  # none deterministic, direct and within the budget
    cdims = luxlib.ConvDims((1, 2, 5, 5), (3, 2, 3, 3), padding=1)
    x, w = lib.memory.new(np.ones(cdims.x_shape, np.float32)), lib.memory.new(np.ones(cdims.w_shape, np.float32))
    assert dnn.convolution(cdims, 1, x.dtype) is None
    assert type(_conv._plan(emu("conv"), BLAS, w, x, cdims, dnn)) is _conv._Plan
    gc.collect()
    made = {k for k, v in lib.objects.items() if v["kind"] != "Handle"}
    assert made and made == lib.destroyed  # the refused layout's descriptors are freed


def test_layouts_cached_and_descriptors_destroyed(stand_in):
    dnn, lib = stand_in
    cdims = luxlib.ConvDims((1, 2, 5, 5), (3, 2, 3, 3), padding=1)
    conv = dnn.convolution(cdims, 2, np.dtype(np.float32))
    assert dnn.convolution(cdims, 2, np.dtype(np.float32)) is conv
    assert dnn.convolution(cdims, 3, np.dtype(np.float32)) is not conv
    made = {k for k, v in lib.objects.items() if v["kind"] != "Handle"}
    assert len(made) == 2 * 6 and not lib.destroyed  # 2 tensors, a filter, 3 convolutions each
    dnn._convolution.cache_clear()
    del conv
    gc.collect()
    assert lib.destroyed == made


def test_error_status_raises(stand_in):
    dnn, lib = stand_in
    cdims = luxlib.ConvDims((1, 2, 5, 5), (3, 2, 3, 3), padding=1)
    x, w = lib.memory.new(np.ones(cdims.x_shape, np.float32)), lib.memory.new(np.ones(cdims.w_shape, np.float32))
    lib.fail = "cudnnConvolutionForward"
    plan = _conv._plan(emu("conv"), BLAS, w, x, cdims, dnn)
    with pytest.raises(_cudnn.CuDNNError, match="fused_conv_bias_activation: cuDNN's cudnnConvolutionForward "
                                                "failed: CUDNN_STATUS_STAND_IN"):
        plan.conv()


def test_a_handle_per_thread(stand_in):
    dnn, lib = stand_in
    cdims = luxlib.ConvDims((1, 2, 5, 5), (3, 2, 3, 3), padding=1)
    x, w = lib.memory.new(np.ones(cdims.x_shape, np.float32)), lib.memory.new(np.ones(cdims.w_shape, np.float32))
    plan = _conv._plan(emu("conv"), BLAS, w, x, cdims, dnn)

    def two_calls():
        plan.conv()
        plan.conv()

    two_calls()
    thread = threading.Thread(target=two_calls)
    thread.start()
    thread.join()
    assert len(lib.handles) == 2 and lib.handles[0] != lib.handles[1]


@pytest.mark.parametrize("value", [None, "0", "", "yes"])
def test_off_unless_luxlib_cudnn_1(monkeypatch, value):
    """cuDNN is an opt-in: the library is not even loaded without LUXLIB_CUDNN=1."""
    monkeypatch.setattr(_cudnn, "load_library", lambda: "lib")
    monkeypatch.setattr(_cudnn, "_CUDNN", [])
    if value is None:
        monkeypatch.delenv("LUXLIB_CUDNN", raising=False)
    else:
        monkeypatch.setenv("LUXLIB_CUDNN", value)
    assert _cudnn.get_cudnn() is None
    monkeypatch.setattr(_cudnn, "_CUDNN", [])
    monkeypatch.setenv("LUXLIB_CUDNN", "1")
    assert isinstance(_cudnn.get_cudnn(), _cudnn.CuDNN)


def test_status(monkeypatch):
    """show_config's line: the version and library, off, or not found."""
    lib = types.SimpleNamespace(cudnnGetVersion=lambda: 92801, _name="/x/libcudnn.so.9")
    monkeypatch.setattr(_cudnn, "_CUDNN", [_cudnn.CuDNN(lib)])
    assert _cudnn.status() == "cuDNN 9.28.1 (/x/libcudnn.so.9): GPU convolutions"
    monkeypatch.setattr(_cudnn, "_CUDNN", [None])
    monkeypatch.setenv("LUXLIB_CUDNN", "1")
    assert _cudnn.status().startswith("cuDNN 9 not found (pip install nvidia-cudnn-cu13)")
    monkeypatch.delenv("LUXLIB_CUDNN")
    assert _cudnn.status().startswith("off (LUXLIB_CUDNN=1 turns it on)")


def test_missing_library_is_none(tmp_path):
    assert _cudnn.load_library([str(tmp_path / "libcudnn.so.9")]) is None
