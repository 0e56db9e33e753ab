"""luxlib's kernel launcher (``luxlib/_kernels/launch.pyx``, ``_modules._Launcher``) without a
GPU: a stand-in ``cuLaunchKernel`` (a ctypes callback with the driver's signature) receives
what the launcher builds. The end-to-end tests run the public ops on stand-in CuPy arrays
(``device_memory.DeviceArray``: NumPy arrays with CuPy's ``.data.ptr``) through the GPU
modules' own ``get_function`` and ``_driver``; the stand-in runs the emulated kernel on the
parameter array the launcher built, and every result must equal, bit for bit, that of the
emulator's own calling convention."""

import ctypes
import sys
import threading
import types

import emu_blas
import emu_cupy
import emu_module
import numpy as np
import pytest
from device_memory import DeviceArray

import luxlib
import luxlib.cuda
from luxlib import _dispatch
from luxlib._kernels import launch as _launch
from luxlib.cuda import _device, _modules

# CUresult cuLaunchKernel(CUfunction, 6 x unsigned, unsigned shared, CUstream, void**, void**)
CU_LAUNCH_KERNEL = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *[ctypes.c_uint] * 7, ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p)
STREAM = 0x5EA


class StandIn:
    """A stand-in ``cuLaunchKernel``: records each launch as ``(function, grid, block, shared
    memory, stream, params address, extra)``, then calls ``run(function, grid, block, params)``
    when given one, and returns ``status``."""

    def __init__(self, run=None):
        self.launches, self.run, self.status, self.errors = [], run, 0, []
        self.callback = CU_LAUNCH_KERNEL(self._launch)
        self.address = ctypes.cast(self.callback, ctypes.c_void_p).value

    def _launch(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
        self.launches.append((f, (gx, gy, gz), (bx, by, bz), shared, stream, params, extra))
        if self.run is not None:
            try:
                self.run(f, (gx, gy, gz), (bx, by, bz), params)
            except Exception as exc:  # noqa: BLE001 (re-raised by the test, not lost in the callback)
                self.errors.append(exc)
                return 1
        return self.status


@pytest.fixture
def bound():
    """Binds a :class:`StandIn` to the launcher; the binding before is put back after."""
    stand_in = StandIn()
    before = _launch.bind(stand_in.address)
    yield stand_in
    _launch.bind(before)
    if stand_in.errors:
        raise stand_in.errors[0]


def _param(params, i, size):
    """The ``size`` bytes that parameter ``i`` of a launch points to."""
    return ctypes.string_at(ctypes.cast(params, ctypes.POINTER(ctypes.c_void_p))[i], size)


class _Pointer:
    """An object with CuPy's ``.data.ptr``."""

    def __init__(self, ptr):
        self.data = types.SimpleNamespace(ptr=ptr)


STRUCT = np.dtype([("n", np.int64), ("c", np.int32), ("scale", np.float64), ("k", np.int32, (3,))], align=True)


def test_arrays_go_as_device_pointers_scalars_and_structs_as_their_bytes(bound):
    s = np.array((2**40 + 3, -7, 0.25, (1, 2, 3)), STRUCT)[()]
    scalars = (np.int32(-2), np.int64(2**40), np.uint32(2**32 - 1), np.float32(1.5), np.float64(-0.1),
               np.float16(3), s)
    args = [_Pointer(0xDEAD0000), *scalars, _Pointer(2**63 + 8)]  # any sequence, as CuPy's call takes
    assert _launch.launch(0xF00, (7,), (256, 2), args, STREAM) == 0
    ((f, grid, block, shared, stream, params, extra),) = bound.launches
    assert (f, grid, block, shared, stream, extra) == (0xF00, (7, 1, 1), (256, 2, 1), 0, STREAM, None)
    assert _param(params, 0, 8) == (0xDEAD0000).to_bytes(8, "little")
    for i, v in enumerate(scalars, start=1):
        assert _param(params, i, v.dtype.itemsize) == v.tobytes(), (i, v)
    assert _param(params, 8, 8) == (2**63 + 8).to_bytes(8, "little")
    assert STRUCT.itemsize == 40  # the struct as a kernel takes it: its padding included


@pytest.mark.parametrize("grid, block, want", [((3, 4, 5), (32, 2, 2), ((3, 4, 5), (32, 2, 2))),
                                               ((0,), (1, 0), ((1, 1, 1), (1, 1, 1))),
                                               ((2, 3), (64,), ((2, 3, 1), (64, 1, 1)))])
def test_grids_and_blocks_as_cupys_call_takes_them(bound, grid, block, want):
    """1 to 3 extents, the missing ones 1 and each at least 1, as ``cupy.RawKernel``'s call."""
    _launch.launch(1, grid, block, (), 0)
    assert bound.launches[0][1:3] == want


def test_bad_arguments_are_refused_before_the_driver(bound):
    for bad in (np.zeros(3, np.float32), 3, 2.0, None, "x"):
        with pytest.raises(TypeError, match=r"argument 1 is neither a device array nor a NumPy scalar"):
            _launch.launch(1, (1,), (1,), (np.int32(0), bad), 0)
    with pytest.raises(ValueError, match="1 to 3 extents"):
        _launch.launch(1, (1, 1, 1, 1), (1,), (), 0)
    with pytest.raises(ValueError, match="1 to 3 extents"):
        _launch.launch(1, (1,), (), (), 0)
    with pytest.raises(ValueError, match="beyond the driver's"):
        _launch.launch(1, (2**31,), (1,), (), 0)
    with pytest.raises(ValueError, match="65 arguments, at most 64"):
        _launch.launch(1, (1,), (1,), (np.int32(0),) * 65, 0)
    assert bound.launches == []


def test_the_drivers_status_comes_back(bound):
    bound.status = 701
    assert _launch.launch(1, (1,), (1,), (np.int32(0),), 0) == 701


def test_unbound_launcher_refuses():
    before = _launch.bind(0)
    try:
        with pytest.raises(RuntimeError, match="no launch function bound"):
            _launch.launch(1, (1,), (1,), (), 0)
    finally:
        _launch.bind(before)


class _DriverError(RuntimeError):
    pass


class _Kernel:
    """Stands in for ``cupy.RawKernel``: ``.kernel.ptr`` is the handle on the current device."""

    def __init__(self, handles, device):
        self.handles, self.device, self.loads = handles, device, []

    @property
    def kernel(self):
        self.loads.append((threading.get_ident(), self.device[0]))
        return types.SimpleNamespace(ptr=self.handles[self.device[0]])


def _stand_in_cupy(device, contexts):
    """A ``cupy`` module with what :class:`_modules._Driver` reads, its device in ``device[0]``."""
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: device[0],
                                      memGetInfo=lambda: contexts.append((threading.get_ident(), device[0]))),
        get_current_stream=lambda d: types.SimpleNamespace(ptr=STREAM + d),
        driver=types.SimpleNamespace(CUDADriverError=_DriverError),
    )
    return cupy


def test_launcher_takes_each_devices_function_and_stream_with_a_context_per_thread(bound):
    device, contexts = [0], []
    driver = _modules._Driver(_stand_in_cupy(device, contexts), _launch.launch)
    kernel = _Kernel({0: 0xA0, 1: 0xA1}, device)
    launcher = _modules._Launcher(kernel, driver)
    launcher((1,), (32,), (np.int32(5),))
    launcher((1,), (32,), (np.int32(6),))
    device[0] = 1
    launcher((2,), (32,), (np.int32(7),))
    other = threading.Thread(target=launcher, args=((3,), (32,), (np.int32(8),)))
    other.start()
    other.join()
    assert [(f, grid[0], stream) for f, grid, _, _, stream, _, _ in bound.launches] == [
        (0xA0, 1, STREAM), (0xA0, 1, STREAM), (0xA1, 2, STREAM + 1), (0xA1, 3, STREAM + 1)]
    # a context made current, and the function looked up, once per thread and device
    me = threading.get_ident()
    assert contexts == kernel.loads == [(me, 0), (me, 1), (other.ident, 1)]
    bound.status = 719
    with pytest.raises(_DriverError):
        launcher((1,), (1,), (np.int32(0),))


class _Raw:
    """Stands in for a compiled ``cupy.RawModule``."""

    def __init__(self, handles):
        self.handles = handles

    def get_function(self, name):
        return _Kernel({0: self.handles[name]}, [0])


def test_gpu_modules_launch_through_the_launcher_bound_to_the_driver(monkeypatch):
    """``get_module``'s kernels are :class:`_modules._Launcher`s once :func:`_modules._driver`
    has bound the driver's ``cuLaunchKernel`` (here the stand-in's address), and CuPy's own
    kernels with ``LUXLIB_CUDA_LAUNCH=cupy`` or without a driver."""
    stand_in = StandIn()
    before = _launch.bind(0)
    try:
        monkeypatch.setitem(sys.modules, "cupy", _stand_in_cupy([0], []))
        monkeypatch.setattr(_modules, "_DRIVER", [])
        monkeypatch.setattr(_modules, "_cuda_launch_address", lambda: stand_in.address)
        handles = {"multiply<float>": 0xB0}
        kernels = _modules._Kernels("dropout", compile=lambda family, ctype: _Raw(handles))
        launcher = kernels.get_function("multiply<float>")
        assert isinstance(launcher, _modules._Launcher) and kernels.get_function("multiply<float>") is launcher
        launcher((4,), (256,), (_Pointer(64), _Pointer(128), _Pointer(192), np.int64(9)))
        assert [(f, grid, stream) for f, grid, _, _, stream, _, _ in stand_in.launches] == [
            (0xB0, (4, 1, 1), STREAM)]
        driver = _modules._DRIVER[0]
        assert _modules._driver() is driver  # made once

        monkeypatch.setattr(_modules, "_DRIVER", [])
        monkeypatch.setenv("LUXLIB_CUDA_LAUNCH", "cupy")
        assert _modules._driver() is None
        assert isinstance(_modules._Kernels("dropout", compile=lambda f, t: _Raw(handles)).get_function(
            "multiply<float>"), _Kernel)
        monkeypatch.delenv("LUXLIB_CUDA_LAUNCH")

        def no_driver():
            raise OSError("libcuda.so.1: cannot open shared object file")

        monkeypatch.setattr(_modules, "_cuda_launch_address", no_driver)
        assert _modules._driver() is None and _modules._DRIVER == []
    finally:
        _launch.bind(before)


# ---- end to end: the public ops through the launcher, the emulated kernels behind it -----


class _EmulatedDriver:
    """Compiled modules whose kernels' handles name emulated kernels, and a stand-in
    ``cuLaunchKernel`` that runs the kernel a handle names on the parameter array it gets."""

    def __init__(self):
        self.kernels, self.stand_in = [], StandIn(self._run)

    def compile(self, family, ctype):
        return self

    def get_function(self, name):
        family = next(f for f, (_, names) in _modules.FAMILIES.items() if name[: name.index("<")] in names)
        self.kernels.append(emu_module.shared(family).get_function(name))
        return _Kernel({0: len(self.kernels)}, [0])  # handle i + 1: kernel i (0 is no function)

    def _run(self, f, grid, block, params):
        kernel = self.kernels[f - 1]
        dims = [(ctypes.c_uint * 3)(*d) for d in (grid, block)]
        err = kernel._launch(dims[0], dims[1], params, emu_module.SCHEDULES[kernel.module.schedule],
                             kernel.module.seed)
        if err is not None:
            raise RuntimeError(f"{kernel.name}: {err.decode()}")


def _calls(rng):
    """``name -> (function, positional arguments)`` of ops whose launches cover every argument
    kind: arrays, scalars, structs (normalization, conv)."""

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x, b = f32(4, 6, 5, 3), f32(6)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    xc, w33, wdw = f32(2, 4, 7, 6), f32(5, 4, 3, 3), f32(4, 1, 3, 3)
    c33 = luxlib.ConvDims(xc.shape, w33.shape, padding=1, stride=(2, 1))
    cdw = luxlib.ConvDims(xc.shape, wdw.shape, padding=1, groups=4)
    return {
        "fast_activation gelu": (luxlib.fast_activation, ("gelu", f32(3, 8, 37))),
        # the caller's generator is not advanced: both runs draw the same key
        "dropout": (luxlib.dropout, (np.random.default_rng(3), x, 0.5, True)),
        "dropout dims": (luxlib.dropout, (np.random.default_rng(4), x, 0.3, True, 1.0, (1,))),
        "alpha_dropout": (luxlib.alpha_dropout, (np.random.default_rng(5), x, 0.25, True)),
        "bias_activation relu": (luxlib.bias_activation, ("relu", x, b)),
        "batchnorm": (luxlib.batchnorm, (x, b, b, rm, rv, True, "tanh", 0.1, 1e-5)),
        "groupnorm": (luxlib.groupnorm, (x, b, b, 3, "relu", 1e-5)),
        "layernorm": (luxlib.layernorm, (x, f32(5, 3), f32(5, 3), "gelu", (2, 3), 1e-5)),
        "dense": (luxlib.fused_dense_bias_activation, ("sigmoid", f32(7, 9), f32(5, 9), f32(7))),
        "conv 3x3": (luxlib.fused_conv_bias_activation, ("relu", w33, xc, f32(5), c33)),
        "depthwise conv": (luxlib.fused_conv_bias_activation, ("identity", wdw, xc, f32(4), cdw)),
    }


def _run(f, args, dy_seed, to_device, to_host=np.asarray):
    """``(outputs, gradients)`` of ``f(*args)`` and its pullback of a random cotangent, as
    NumPy arrays (``to_host``)."""
    args = tuple(to_device(a) if isinstance(a, np.ndarray) else a for a in args)
    y, pullback = luxlib.vjp(f, *args)
    primary = y[0] if isinstance(y, tuple) else y
    dy = np.random.default_rng(dy_seed).standard_normal(primary.shape).astype(primary.dtype)
    grads = pullback(to_device(dy))  # the cotangent of the primary output
    arrays = lambda values: [to_host(v) for v in values if hasattr(v, "shape")]  # noqa: E731 (not the rng)
    return arrays(y if isinstance(y, tuple) else (y,)), arrays(grads)


def test_ops_through_the_launcher_equal_the_emulators_calls(monkeypatch):
    emulated = _EmulatedDriver()
    blas = emu_blas.EmuBLAS()
    kernels = {family: _modules._Kernels(family, compile=emulated.compile) for family in _modules.FAMILIES}
    # NumPy arrays keep NumPy as their namespace: the stand-in CuPy serves the DeviceArrays only
    monkeypatch.setitem(sys.modules, "cupy", emu_cupy.numpy_as_cupy(_stand_in_cupy([0], []).cuda))
    monkeypatch.setattr(_dispatch, "_kind", lambda arrays: "gpu")
    monkeypatch.setattr(_modules, "_DRIVER", [])
    monkeypatch.setattr(_modules, "_cuda_launch_address", lambda: emulated.stand_in.address)
    before = _launch.bind(0)
    try:
        for name, (f, args) in _calls(np.random.default_rng(0)).items():
            monkeypatch.setattr(luxlib.cuda, "_mod", lambda family: {"blas": blas}.get(family) if family in (
                "blas", "cudnn") else emu_module.shared(family))  # the emulator's own calling convention
            monkeypatch.setattr(_dispatch, "_GPU_RUN", [_dispatch._run_here])  # NumPy arrays are on no GPU
            want = _run(f, args, 1, lambda a: a)
            monkeypatch.setattr(luxlib.cuda, "_mod", lambda family: {"blas": blas}.get(family) if family in (
                "blas", "cudnn") else kernels[family])
            monkeypatch.setattr(_dispatch, "_GPU_RUN", [_device.run])
            launches = len(emulated.stand_in.launches)
            got = _run(f, args, 1, lambda a: np.array(a).view(DeviceArray))
            assert len(emulated.stand_in.launches) > launches, name  # the launcher ran them
            if emulated.stand_in.errors:
                raise emulated.stand_in.errors[0]
            assert got[0] and got[1] and len(got[0]) == len(want[0]) and len(got[1]) == len(want[1]), name
            for g, w in zip(got[0] + got[1], want[0] + want[1]):
                np.testing.assert_array_equal(g, w, err_msg=name)
    finally:
        _launch.bind(before)
    assert all(isinstance(k, _modules._Launcher) for m in kernels.values() for k in m._kernels.values())


@pytest.mark.gpu
@pytest.mark.real_cupy
def test_launcher_equals_cupys_call_on_gpu(cp, monkeypatch):
    """On a GPU: the ops launched by luxlib's launcher, on this thread and on a new one (whose
    CUDA context the launcher makes current), equal those launched by CuPy's own call."""
    assert _modules._driver() is not None, "luxlib's launcher is not bound on this GPU"
    assert isinstance(_modules.get_module("bias_activation").get_function("act_forward<float>"),
                      _modules._Launcher)
    real_driver = _modules._driver
    results = {}
    for launcher in ("cupy", "luxlib", "luxlib, new thread"):
        monkeypatch.setattr(_modules, "_driver", (lambda: None) if launcher == "cupy" else real_driver)
        kernels = {family: _modules._Kernels(family) for family in _modules.FAMILIES}
        monkeypatch.setattr(luxlib.cuda, "_mod", lambda family: kernels[family] if family in kernels else (
            luxlib.cuda.get_blas() if family == "blas" else None))

        def run(out, errors):
            try:
                out.extend(_run(f, args, 1, cp.asarray, cp.asnumpy) for f, args in _calls(np.random.default_rng(0)).values())
            except Exception as exc:  # noqa: BLE001 (raised again on the test's thread)
                errors.append(exc)

        out, errors = [], []
        if launcher.endswith("new thread"):
            thread = threading.Thread(target=run, args=(out, errors))
            thread.start()
            thread.join()
        else:
            run(out, errors)
        if errors:
            raise errors[0]
        results[launcher] = out
        launched = [k for m in kernels.values() for k in m._kernels.values()]
        assert launched and all(isinstance(k, _modules._Launcher) == (launcher != "cupy") for k in launched)
    for launcher in ("luxlib", "luxlib, new thread"):
        assert len(results[launcher]) == len(results["cupy"]) == len(_calls(np.random.default_rng(0)))
        for (outs, grads), (outs0, grads0) in zip(results[launcher], results["cupy"]):
            for g, w in zip(outs + grads, outs0 + grads0):
                np.testing.assert_array_equal(g, w, err_msg=launcher)
