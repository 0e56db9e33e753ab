"""asv benchmarks: the Python host time of the GPU path's launch code, measured on the CPU.

Small NumPy arrays go to the CUDA implementations (``luxlib.cuda``), whose kernel modules
and cuBLAS are replaced by stand-ins that launch nothing. What is timed is luxlib's own
Python per call (validation, dispatch, launch planning, the glue), without CuPy's launch
and allocation costs, which only a GPU shows (doc/cuda.md, "Our own Python per call").
On a GPU that Python is a large part of a small op's time, so it is tracked here, where
asv runs. ``LaunchHostTime`` times luxlib's kernel launcher, which the stand-ins above
replace, bound to a launch function that launches nothing.
"""

from types import SimpleNamespace

import numpy as np

import luxlib
import luxlib.cuda
from luxlib import _dispatch


class _Kernel:
    def __call__(self, grid, block, args):
        pass


class _Module:
    """Kernel modules and cuBLAS at once: every kernel and every gemm does nothing."""

    tuning = luxlib.cuda._modules.GPU_TUNING  # as the GPU's modules

    def get_function(self, name):
        return _Kernel()

    def gemm_strided_batched(self, *args):
        pass


def _calls():
    rng = np.random.default_rng(0)

    def f32(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    x, b, s = f32(8, 16, 4, 4), f32(16), f32(16)
    rm, rv = np.zeros(16, np.float32), np.ones(16, np.float32)
    xl, sl, bl = f32(8, 16, 32), np.ones(32, np.float32), np.zeros(32, np.float32)
    w, xd, bd = f32(32, 64), f32(16, 64), f32(32)
    xc, wdw, w33 = f32(4, 16, 8, 8), f32(16, 1, 3, 3), f32(16, 16, 3, 3)
    cdw = luxlib.ConvDims(xc.shape, wdw.shape, padding=1, groups=16)
    c33 = luxlib.ConvDims(xc.shape, w33.shape, padding=1)
    gen = np.random.default_rng(1)
    return {
        "fast_activation": lambda: luxlib.fast_activation("relu", x),
        "bias_activation": lambda: luxlib.bias_activation("relu", x, b),
        "dropout": lambda: luxlib.dropout(gen, x, 0.5, True),
        "batchnorm": lambda: luxlib.batchnorm(x, s, b, rm, rv, True, "relu", 0.1, 1e-5),
        "groupnorm": lambda: luxlib.groupnorm(x, s, b, 4, "relu", 1e-5),
        "instancenorm": lambda: luxlib.instancenorm(x, s, b, True, "relu", 1e-5),
        "layernorm": lambda: luxlib.layernorm(xl, sl, bl, None, (2,), 1e-5),
        "fused_dense_bias_activation": lambda: luxlib.fused_dense_bias_activation("relu", w, xd, bd),
        "batched_matmul": lambda: luxlib.batched_matmul(xl, xl.transpose(0, 2, 1)),
        "fused_conv_bias_activation": lambda: luxlib.fused_conv_bias_activation("relu", w33, xc, b, c33),
        "depthwise conv": lambda: luxlib.fused_conv_bias_activation("relu", wdw, xc, b, cdw),
        "vjp batchnorm": lambda: luxlib.vjp(luxlib.batchnorm, x, s, b, rm, rv, True, "relu", 0.1, 1e-5),
        # forward and backward
        "pullback bias_activation": lambda: luxlib.vjp(luxlib.bias_activation, "relu", x, b)[1](x),
        "pullback conv 3x3": lambda: luxlib.vjp(luxlib.fused_conv_bias_activation, "relu", w33, xc, b, c33)[1](xc),
    }


class GPUHostTime:
    params = list(_calls())
    param_names = ["call"]

    def setup(self, name):
        self._saved = _dispatch._kind, luxlib.cuda._mod, _dispatch._GPU_RUN[0]
        module = _Module()
        _dispatch._kind = lambda arrays: "gpu"
        # NumPy arrays are on no GPU: the device check is timed by DeviceHostTime
        _dispatch.set_gpu_run(_dispatch._run_here)
        # no cuDNN: the convolutions time luxlib's own launch code (im2col + gemm)
        luxlib.cuda._mod = lambda family: None if family == "cudnn" else module
        self.call = _calls()[name]
        self.call()  # plans and caches made once, as in a training loop

    def teardown(self, name):
        _dispatch._kind, luxlib.cuda._mod, gpu_run = self._saved
        _dispatch.set_gpu_run(gpu_run)

    def time_call(self, name):
        self.call()


class LaunchHostTime:
    """luxlib's kernel launcher (``luxlib/_kernels/launch.pyx`` behind ``_modules._Launcher``),
    bound to a launch function that launches nothing: the host time luxlib adds to the
    driver's ``cuLaunchKernel`` for a kernel of three arrays, an int and a struct (CuPy's own
    call, which it replaces, builds a Python object per argument first)."""

    def setup(self):
        from luxlib._kernels import launch
        from luxlib.cuda import _modules

        self._launch, self._before = launch, launch.bind(launch.NOTHING)
        stream = SimpleNamespace(ptr=0)
        driver = SimpleNamespace(get_device=lambda: 0, get_current_stream=lambda device: stream,
                                 ensure_context=lambda: None, error=RuntimeError, launch=launch.launch)
        self.launcher = _modules._Launcher(SimpleNamespace(kernel=SimpleNamespace(ptr=1)), driver)
        struct = np.zeros((), np.dtype([("n", np.int64), ("c", np.int32), ("k", np.int32, (3,))], align=True))[()]
        arrays = tuple(SimpleNamespace(data=SimpleNamespace(ptr=p)) for p in (256, 512, 768))  # CuPy's .data.ptr
        self.args = arrays + (np.int64(10), struct)
        self.launcher((40,), (256,), self.args)

    def teardown(self):
        self._launch.bind(self._before)

    def time_launch(self):
        self.launcher((40,), (256,), self.args)


class DeviceHostTime:
    """luxlib's device check of a GPU call (``luxlib/cuda/_device.py``, which ``GPUHostTime``
    leaves out: its NumPy arrays are on no GPU): three arrays on the current device, so no
    switch, around an implementation that does nothing. A stand-in CuPy module answers the
    current device (CuPy's ``getDevice`` is a C call)."""

    def setup(self):
        import sys

        from luxlib.cuda import _device

        self._device, self._cupy = _device, sys.modules.get("cupy")
        sys.modules["cupy"] = SimpleNamespace(cuda=SimpleNamespace(runtime=SimpleNamespace(getDevice=lambda: 0)))
        self.arrays = tuple(SimpleNamespace(data=SimpleNamespace(device_id=0, ptr=p)) for p in (256, 512, 768))
        self.kwargs = dict(zip(("weight", "x", "bias"), self.arrays))
        self.impl = SimpleNamespace(forward=lambda **kw: None, vjp=lambda **kw: (None, lambda dy: None))
        self.slot = []

    def teardown(self):
        import sys

        if self._cupy is None:
            del sys.modules["cupy"]
        else:
            sys.modules["cupy"] = self._cupy

    def time_forward(self):
        self._device.run("op", self.arrays, self.impl, None, self.kwargs)

    def time_vjp_and_pullback(self):
        self._device.run("op", self.arrays, self.impl, self.slot, self.kwargs)
        self.slot.pop()(self.arrays[0])
