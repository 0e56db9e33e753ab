"""Kernel sources and their lazily compiled CuPy modules.

Each op family has one ``.cu`` file in this package (shipped as package data),
compiled on first use into a ``cupy.RawModule`` per element type (float, double,
__half) holding every kernel of the family for that type (``name_expressions``).
Nothing here imports CuPy at import time.
"""

import ctypes
import functools
import hashlib
import os
import threading
from collections import namedtuple

import numpy as np

__all__ = [
    "CHANNELS",
    "COMPILE_OPTIONS",
    "DIVISOR",
    "DTYPES",
    "FAMILIES",
    "GPU_TUNING",
    "MIN_CHUNK",
    "ROWS_MAX",
    "TYPES",
    "Tuning",
    "UNROLL",
    "acc_scalar",
    "act_param",
    "channels_arg",
    "compile_options",
    "divisor",
    "get_module",
    "grid_1d",
    "grid_vectors",
    "kernel_name",
    "launch",
    "launch_status",
    "name_expressions",
    "read_source",
    "source_dir",
    "struct_arg",
    "tuning",
]

#: family -> (file, kernel templates)
FAMILIES = {
    "bias_activation": (
        "bias_activation.cu",
        ("bias_act_forward", "act_forward", "act_backward", "bias_act_backward_db", "bias_act_backward_db_rows",
         "bias_act_db_finalize"),
    ),
    "dropout": (
        "dropout.cu",
        ("dropout_mask", "alpha_dropout_forward", "alpha_dropout_backward", "multiply", "multiply_channel"),
    ),
    "conv": ("conv.cu", ("im2col", "col2im", "dw_conv_forward", "dw_conv_dx", "dw_conv_dw_partial",
                         "dw_conv_dw_finalize")),
    "normalization": (
        "normalization.cu",
        ("norm_stats_partial", "norm_stats_cols_partial", "norm_stats_finalize", "norm_stats_finalize_running",
         "norm_forward", "norm_backward_partial", "norm_backward_cols_partial", "norm_backward_dx",
         "norm_backward_dx_cols",
         "norm_rows_forward", "norm_rows_backward", "norm_given_stats", "norm_running_update",
         "norm_backward_finalize", "norm_cols_finalize"),
    ),
}

#: dtype name -> CUDA element type
TYPES = {"float32": "float", "float64": "double", "float16": "__half"}
#: the dtypes the kernels take
DTYPES = frozenset(np.dtype(name) for name in TYPES)

#: options of every compile (plus the include path of this directory, compile_options())
COMPILE_OPTIONS = ("--std=c++17",)

#: threads per block of the 1-D kernels; cap on the grid of grid-stride kernels
BLOCK = 256
MAX_BLOCKS = 65535
#: items (16-byte vectors, or elements) per thread and step of the elementwise loops
#: (``LX_UNROLL`` in common.cuh); the grids of those kernels are sized for it
UNROLL = 4

#: the normalization's reductions are cut into chunks of at least this many elements (a module
#: may lower it: ``norm_min_chunk``, used by the tests)
MIN_CHUNK = 4096
#: layernorm rows of at most this many elements run the rows kernels (normalization.cu: the
#: backward's LX_ROWS_COLS columns for each of at most LX_ROWS_THREADS threads, the forward's
#: LX_ROWS_LANE_COLS columns for each lane of a warp; a module may lower it:
#: ``norm_rows_max``, for tests)
ROWS_MAX = 1024

#: a module's launch-shaping attributes, named as on the module (test hooks of the emulated
#: modules, ``norm_wide_index`` asking the normalization's elementwise kernels for 64-bit
#: indices; on a GPU the defaults). The launch plans, cached per shape and options, take a
#: Tuning in place of the module, so the hooks are part of their keys.
Tuning = namedtuple("Tuning", "max_blocks norm_min_chunk norm_rows_max norm_wide_index")
#: the Tuning of the kernel modules on a GPU, which have no hooks
GPU_TUNING = Tuning(MAX_BLOCKS, MIN_CHUNK, ROWS_MAX, False)


def tuning(mod):
    """``mod``'s :data:`Tuning`: its ``tuning`` attribute where it has one (the modules of
    :func:`get_module`: GPU_TUNING, without building a Tuning on every launch), else its hooks,
    with GPU_TUNING's values for those it lacks."""
    t = getattr(mod, "tuning", None)
    if t is not None:
        return t
    return Tuning(getattr(mod, "max_blocks", MAX_BLOCKS), getattr(mod, "norm_min_chunk", MIN_CHUNK),
                  getattr(mod, "norm_rows_max", ROWS_MAX), getattr(mod, "norm_wide_index", False))


def source_dir():
    return os.path.dirname(os.path.abspath(__file__))


def _text(filename):
    with open(os.path.join(source_dir(), filename), encoding="utf-8") as f:
        return f.read()


def headers_digest():
    """Digest of every ``.cuh`` header (CuPy's cache key covers the code, not headers)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(source_dir())):
        if name.endswith(".cuh"):
            h.update(name.encode() + b"\0" + _text(name).encode())
    return h.hexdigest()[:16]


def read_source(filename):
    """The text of ``filename`` with a ``#line 1`` prefix so diagnostics name the file."""
    return f"// luxlib headers {headers_digest()}\n#line 1 \"{filename}\"\n" + _text(filename)


@functools.cache  # launch overhead: NumPy's dtype.name alone takes microseconds
def kernel_name(kernel, dtype):
    """The name expression of ``kernel`` for arrays of ``dtype``, e.g. ``"multiply<float>"``."""
    return f"{kernel}<{TYPES[np.dtype(dtype).name]}>"


def name_expressions(family, ctype=None):
    """The name expressions of ``family``'s kernels: for every element type, or for the CUDA
    type ``ctype`` (``"float"``, ``"double"``, ``"__half"``) only."""
    return [f"{k}<{t}>" for k in FAMILIES[family][1] for t in TYPES.values() if ctype in (None, t)]


def compile_options():
    return COMPILE_OPTIONS + ("-I" + source_dir(),)


def _compile(family, ctype):
    import cupy  # only reached with CuPy arrays, whose owner has CuPy

    return cupy.RawModule(code=read_source(FAMILIES[family][0]), options=compile_options(),
                          name_expressions=name_expressions(family, ctype))


_MODULES = {}


def _cuda_launch_address():
    """The address of the driver's ``cuLaunchKernel`` (``libcuda``, which CuPy has loaded
    already); OSError where there is no driver."""
    return ctypes.cast(ctypes.CDLL("libcuda.so.1").cuLaunchKernel, ctypes.c_void_p).value


class _Driver:
    """What :class:`_Launcher` needs: CuPy's current device and stream, the runtime call that
    makes a thread's CUDA context current (CuPy's launch makes the same one), the driver's
    error, and luxlib's launch (:func:`luxlib._kernels.launch.launch`)."""

    def __init__(self, cupy, launch):
        self.get_device = cupy.cuda.runtime.getDevice
        self.get_current_stream = cupy.cuda.get_current_stream
        self.ensure_context = cupy.cuda.runtime.memGetInfo
        self.error = cupy.cuda.driver.CUDADriverError
        self.launch = launch


_DRIVER = []  # the process's _Driver, once made


def _cupy_launch_asked():
    return os.environ.get("LUXLIB_CUDA_LAUNCH", "").strip().lower() == "cupy"


def _driver():
    """The process's :class:`_Driver`, or None where the kernels launch through CuPy's own
    call: ``LUXLIB_CUDA_LAUNCH=cupy`` in the environment, no CUDA driver, or no launcher."""
    if _DRIVER:
        return _DRIVER[0]
    if _cupy_launch_asked():
        return None
    try:
        import cupy  # only reached with CuPy arrays, whose owner has CuPy

        from .._kernels import launch

        address = _cuda_launch_address()
        driver = _Driver(cupy, launch.launch)
    except (ImportError, OSError, AttributeError):
        return None
    launch.bind(address)
    _DRIVER.append(driver)
    return driver


def launch_status():
    """One line for :func:`luxlib.show_config` and the GPU benchmark: how the GPU kernels launch
    (without importing CuPy: luxlib's launcher binds the driver on the first GPU launch)."""
    if _DRIVER:
        return "luxlib's launcher (the driver's cuLaunchKernel, its parameters built in C)"
    if _cupy_launch_asked():
        return "CuPy's RawKernel call (LUXLIB_CUDA_LAUNCH=cupy)"
    return "luxlib's launcher where the CUDA driver loads (bound on the first GPU launch), else CuPy's call"


class _Launcher:
    """A kernel of :class:`_Kernels` (its ``cupy.RawKernel``, ``kernel``) called as CuPy's is,
    ``launcher(grid, block, args)``, but launched by luxlib's launcher, which builds the
    driver's parameters in C (``luxlib/_kernels/launch.pyx``; CuPy's call makes a Python object
    per argument first: on session 12's H100 a 4-argument kernel took 6.04 us of host time
    through it, the driver's launch alone 3.66)."""

    def __init__(self, kernel, driver):
        self.kernel, self._driver = kernel, driver
        self._local = threading.local()

    def __call__(self, grid, block, args):
        driver = self._driver
        device = driver.get_device()
        function = getattr(self._local, "functions", _NO_FUNCTIONS).get(device)
        if function is None:
            function = self._function(device)
        status = driver.launch(function, grid, block, args, driver.get_current_stream(device).ptr)
        if status:
            raise driver.error(status)

    def _function(self, device):
        """The kernel's ``CUfunction`` on ``device``, kept per thread: first the thread's CUDA
        context is made current, as CuPy's launch does (a thread that has not called the
        runtime has none, and the driver's launch needs one)."""
        self._driver.ensure_context()
        functions = self._local.__dict__.setdefault("functions", {})
        # the RawKernel loads the module on the device and keeps it, and so the handle, alive
        functions[device] = self.kernel.kernel.ptr
        return functions[device]


_NO_FUNCTIONS = {}


class _Kernels:
    """The kernels of ``family``: a ``cupy.RawModule`` per element type, compiled on the first
    launch of one of its kernels (``compile(family, ctype)``; a family takes seconds to compile
    for each type, and a program mostly uses one), and the kernels handed out, kept (CuPy's
    ``get_function`` builds a new ``RawKernel`` on every call, tens of microseconds of launch
    overhead), each in a :class:`_Launcher` where luxlib's launcher runs (:func:`_driver`)."""

    tuning = GPU_TUNING

    def __init__(self, family, compile=_compile):
        self.family, self._compile = family, compile
        self.raw = {}  # CUDA element type -> its module
        self._kernels = {}

    def get_function(self, name):
        kernel = self._kernels.get(name)
        if kernel is None:
            ctype = name[name.index("<") + 1 : -1]
            raw = self.raw.get(ctype)
            if raw is None:
                raw = self.raw[ctype] = self._compile(self.family, ctype)
            kernel = raw.get_function(name)
            driver = _driver()
            kernel = self._kernels[name] = kernel if driver is None else _Launcher(kernel, driver)
        return kernel


def get_module(family):
    """The kernels of ``family`` (each element type's compiled once, on first use)."""
    mod = _MODULES.get(family)
    if mod is None:
        mod = _MODULES[family] = _Kernels(family)
    return mod


def acc_scalar(dtype, value):
    """``value`` rounded to ``dtype`` and typed as the kernels' compute type (float32 for
    float16 and float32 arrays, float64 for float64)."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return np.float64(value)
    if abs(value) <= _FLOAT_MAX[dtype]:  # the common case, without errstate's overhead
        return np.float32(dtype.type(value))
    with np.errstate(over="ignore"):  # e.g. dropout's 1/(1-p) above float16's range is inf, as NumPy casts
        return np.float32(dtype.type(value))


_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32)}


def act_param(act, dtype):
    """The activation's parameter (0 when it has none) as :func:`acc_scalar` types it."""
    return acc_scalar(dtype, act.params[0] if act.params else 0.0)


@functools.lru_cache(maxsize=4096)  # launch overhead: ~1.5 us of Python arithmetic a call
def divisor(d, bits=64):
    """Kernel arguments ``(d, mul, shift)`` of ``lx_divisor`` (``common.cuh``): ``n // d``
    as ``mulhi(2n, mul) >> shift`` in ``bits``-bit unsigned arithmetic, exact for
    ``0 <= n < 2**(bits - 1)``.

    Parameters
    ----------
    d : int
        The divisor, ``1 <= d <= 2**31`` for 32 bits, ``1 <= d < 2**63`` for 64 bits.
    bits : {32, 64}
        Width of the kernel's index type.

    Returns
    -------
    tuple of (numpy.int64, numpy.uint64, numpy.int32)
        ``d``, ``mul = ceil(2**(bits - 1 + shift) / d)`` (below ``2**bits``) and
        ``shift = ceil(log2(d))``.
    """
    d = int(d)
    if bits not in (32, 64):
        raise ValueError(f"bits must be 32 or 64, got {bits}")
    top = 2**31 if bits == 32 else 2**63 - 1  # d is passed as an int64
    if not 1 <= d <= top:
        raise ValueError(f"divisor {d} outside [1, {top}]")
    shift = (d - 1).bit_length()
    mul = -(-(1 << (bits - 1 + shift)) // d)
    return np.int64(d), np.uint64(mul), np.int32(shift)


#: ``lx_div_args`` of common.cuh (a :func:`divisor` as a member of a struct argument)
DIVISOR = np.dtype([("d", np.int64), ("mul", np.uint64), ("shift", np.int32)], align=True)


#: ``lx_channels`` of elementwise.cuh: n elements as (outer, C, inner) around a per-channel operand
CHANNELS = np.dtype([("n", np.int64), ("outer", np.int64), ("C", DIVISOR), ("inner", DIVISOR)], align=True)


@functools.lru_cache(maxsize=512)
def channels_arg(outer, C, inner):
    """The :data:`CHANNELS` struct argument of x viewed as ``(outer, C, inner)``."""
    return struct_arg(CHANNELS, n=outer * C * inner, outer=outer, C=divisor(C), inner=divisor(inner))


def struct_arg(dtype, **fields):
    """A by-value struct kernel argument: a NumPy scalar of the structured ``dtype`` (laid out
    as the kernel's C struct: ``align=True``) with the given field values. Plans build these
    once; CuPy passes one argument for all the fields."""
    a = np.zeros((), dtype)
    for name, value in fields.items():
        a[name] = value
    return a[()]


def launch(mod, plan, arrays):
    """Launch ``plan`` = ``(kernel name, grid, block, scalar arguments)`` (a launch plan, cached
    by the op's launch code) on the arrays ``arrays`` of ``mod``'s calling convention."""
    name, grid, block, scalars = plan
    mod.get_function(name)(grid, block, arrays + scalars)


def grid_vectors(mod, n, itemsize):
    """Grid of an elementwise kernel (``lx_elementwise``) over ``n`` elements of ``itemsize``
    bytes: ``UNROLL`` 16-byte vectors per thread."""
    return grid_1d(mod, n, per_thread=UNROLL * 16 // itemsize)


def grid_1d(mod, n, block=BLOCK, per_thread=1):
    """Grid of a grid-stride kernel over ``n`` items, ``per_thread`` of them per thread and
    step (e.g. a 16-byte vector); a module may lower the cap: ``max_blocks``."""
    cap = getattr(mod, "max_blocks", MAX_BLOCKS)
    return (max(1, min(-(-n // (block * per_thread)), cap)),)
