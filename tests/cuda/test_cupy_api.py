"""luxlib against the installed CuPy itself, with or without a GPU (skipped without CuPy).

The emulated tests run the GPU path's launch code with NumPy as its array namespace, and the
stand-ins of ``test_launch.py`` play CuPy's CUDA calls. Neither can show that a name luxlib
calls exists in CuPy, or takes the arguments luxlib passes. These tests read that from CuPy:
every ``cupy.`` and array-namespace name in luxlib's sources resolves in it, and the calls
whose arguments matter take them (from the signatures CuPy's Cython embeds in its
docstrings). They also import ``luxlib.cuda`` where CuPy is installed and, on a machine
without a GPU, finds none (issue 5: that import must succeed).

CI installs CuPy (``cupy-cuda13x``, no GPU) after the main test run and runs this file with
``LUXLIB_TEST_REAL_CUPY=1``, which makes a missing CuPy an error rather than a skip.
"""

import ctypes
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import luxlib
from luxlib._dispatch import trace
from luxlib.cuda import _modules

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "luxlib")


@pytest.fixture(scope="module")
def cupy():
    if os.environ.get("LUXLIB_TEST_REAL_CUPY") == "1":
        import cupy  # must be there: the test run is about it
    else:
        cupy = pytest.importorskip("cupy")
    return cupy


def _sources():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    yield os.path.relpath(path, ROOT), f.read()


#: ``cupy.a.b``, and names on the array namespace or CuPy module a function holds
#: (``xp.empty``, ``cp.float32``, ``self.cupy.cuda``): each dotted chain up to its first call
_USES = re.compile(r"(?<![\w.])(?:self\.)?(cupy|cp|xp)((?:\.[A-Za-z_]\w*)+)")


def _uses():
    """``{dotted name under cupy: [file, ...]}`` of every use in luxlib's sources."""
    found = {}
    for path, text in _sources():
        for _, chain in _USES.findall(text):
            found.setdefault(chain.lstrip("."), []).append(path)
    return found


def _resolve(cupy, dotted):
    obj = cupy
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_sources_name_cupy(cupy):
    """The scan finds the uses (a broken pattern would pass the test below with nothing)."""
    uses = _uses()
    for name in ("empty", "RawModule", "cuda.get_current_stream", "cuda.runtime.memGetInfo", "random.Generator"):
        assert name in uses, name
    assert len(uses) > 25


def test_every_cupy_name_luxlib_uses_exists(cupy):
    """Every ``cupy.x.y``, ``xp.x`` and ``cp.x`` of luxlib's sources is a name of the installed
    CuPy. The emulated tests give ``xp`` as NumPy: a name NumPy has and CuPy lacks passes them
    and fails on a GPU."""
    missing = {}
    for name, paths in sorted(_uses().items()):
        try:
            _resolve(cupy, name)
        except AttributeError:
            missing[name] = sorted(set(paths))
    assert not missing, f"not in CuPy {cupy.__version__}: {missing}"


def _signature(f):
    """The signature of ``f``, a CuPy function or class: the one Cython embeds as the first line
    of the docstring (of the class, else of its ``__init__``), e.g. ``get_current_stream(int
    device_id=-1)``, with the types dropped and every default None; else Python's own."""
    for doc in (f.__doc__, getattr(f, "__init__", None).__doc__ if inspect.isclass(f) else None):
        match = re.fullmatch(r"[\w.]+\((.*)\)(?:\s*->.*)?", (doc or "").strip().partition("\n")[0])
        if match:
            params = ", ".join(_untyped(p) for p in match.group(1).split(",") if p.strip())
            scope = {}
            exec(f"def _({params}): pass", scope)  # noqa: S102 (a parameter list read from CuPy's docstring)
            signature = inspect.signature(scope["_"])
            return signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "self"])
    return inspect.signature(f)


def _untyped(param):
    """A Cython parameter as a Python one: ``int device_id=-1`` -> ``device_id=None``."""
    head, eq, _ = param.partition("=")
    return head.strip().split()[-1] + ("=None" if eq else "")


#: the CuPy calls luxlib makes with arguments: ``name -> [(how many positional arguments,
#: keyword arguments), ...]``, one entry per way luxlib calls it
CALLS = {
    "RawModule": [(0, ("code", "options", "name_expressions"))],  # _modules._compile
    "RawModule.get_function": [(1, ())],
    "cuda.get_current_stream": [(0, ()), (1, ())],  # cuDNN's handle; _Launcher: the launch's device
    "cuda.runtime.getDevice": [(0, ())],
    "cuda.runtime.memGetInfo": [(0, ())],  # _Launcher: a thread's context made current
    "cuda.runtime.deviceSynchronize": [(0, ())],
    "cuda.runtime.getDeviceProperties": [(1, ())],
    "cuda.runtime.runtimeGetVersion": [(0, ())],
    "cuda.device.get_cublas_handle": [(0, ())],
    "cuda.driver.CUDADriverError": [(1, ())],  # _Launcher: raised with the driver's status
    "cuda.Device": [(1, ())],  # _device: a call on its arrays' device
}


@pytest.mark.parametrize("name", list(CALLS))
def test_cupys_calls_take_luxlibs_arguments(cupy, name):
    signature = _signature(_resolve(cupy, name))
    for positional, keywords in CALLS[name]:
        signature.bind(*range(positional), **dict.fromkeys(keywords))  # TypeError where it cannot


def test_the_attributes_the_launches_read(cupy):
    """What luxlib reads off CuPy's objects, and the driver-level names :class:`_modules._Driver`
    takes (``_driver`` treats an AttributeError as "no launcher": a misspelt name would quietly
    launch every kernel through CuPy's call)."""
    assert inspect.isdatadescriptor(cupy.RawKernel.kernel)  # RawKernel.kernel: its Function here
    assert inspect.isdatadescriptor(cupy.cuda.function.Function.ptr)  # the CUfunction
    assert inspect.isdatadescriptor(cupy.ndarray.data) and inspect.isdatadescriptor(cupy.cuda.MemoryPointer.ptr)
    assert inspect.isdatadescriptor(cupy.cuda.MemoryPointer.device_id)  # _device: an array's device
    assert callable(cupy.cuda.Device.__enter__) and callable(cupy.cuda.Device.__exit__)
    assert cupy.cuda.Stream.null.ptr == 0  # a stream's handle (an instance attribute)
    assert cupy.cuda.runtime.CUDA_R_16F == 2  # cudaDataType's CUDA_R_16F, float16 gemms
    driver = _modules._Driver(cupy, launch=None)
    assert driver.ensure_context is cupy.cuda.runtime.memGetInfo
    assert issubclass(driver.error, Exception)
    # dispatch and dropout know CuPy's arrays and generators by their types' module
    for t in (cupy.ndarray, cupy.random.Generator):
        assert t.__module__.split(".")[0] == "cupy", t
    assert cupy.random.Generator.__name__ == "Generator"


def _subprocess(*args):
    """``python *args`` importing the luxlib this process imports (the installed one in CI,
    whose extensions are built, not the source tree's): run where that one lies, as ``python
    -c`` and ``-m`` look in the working directory first."""
    where = os.path.dirname(os.path.dirname(os.path.abspath(luxlib.__file__)))
    return subprocess.run([sys.executable, *args], cwd=where, capture_output=True, text=True, timeout=300)


def _run(code):
    out = _subprocess("-c", code)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _has_cuda_driver():
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def test_luxlib_cuda_imports_where_cupy_is_installed(cupy):
    """``import luxlib.cuda`` neither imports CuPy nor fails; with CuPy imported, NumPy arrays
    still run on the CPU, ``show_config`` says what CuPy finds, the kernel launcher binds the
    driver where it loads and otherwise leaves the launches to CuPy's call."""
    out = _run(
        "import contextlib, io, sys\n"
        "import numpy as np\n"
        "import luxlib, luxlib.cuda\n"
        "from luxlib.cuda import _modules\n"
        "print('cupy' in sys.modules)\n"
        "import cupy\n"
        "from luxlib._dispatch import trace\n"
        "with trace() as record:\n"
        "    y = luxlib.fast_activation('relu', np.array([-1.0, 2.0], np.float32))\n"
        "print(record, y.tolist())\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    info = luxlib.show_config()\n"
        "print(info['backends']['gpu'])\n"
        "print(_modules._driver() is not None)\n"
        "print(_modules.launch_status())\n"
    ).splitlines()
    with trace() as record:  # NumPy arrays run where they run without CuPy: the CPU
        luxlib.fast_activation("relu", np.array([-1.0, 2.0], np.float32))
    assert record[0][1] in ("looped", "generic")
    assert out[0] == "False"
    assert out[1] == f"{record} [0.0, 2.0]"
    gpu = cupy.cuda.is_available()
    assert out[2] == ("available (CuPy, CUDA device found)" if gpu else "unavailable: CuPy finds no CUDA device")
    bound = _has_cuda_driver() and not _modules._cupy_launch_asked()  # LUXLIB_CUDA_LAUNCH=cupy: never
    assert out[3] == str(bound)
    assert out[4].startswith("luxlib's launcher (" if bound else "CuPy's RawKernel call"
                             if _modules._cupy_launch_asked() else "luxlib's launcher where")


def test_benchmark_without_a_gpu_says_so(cupy):
    if cupy.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = _subprocess("-m", "luxlib.bench", "--device", "cuda", "--quick")
    assert out.returncode == 2
    assert out.stderr.strip() == "python -m luxlib.bench: --device cuda: CuPy finds no CUDA device"
