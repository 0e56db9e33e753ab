"""Each GPU call on the device that holds its arrays (``luxlib/cuda/_device.py``), without a
GPU: the emulated GPU's stand-in CuPy (``emu/emu_cupy.py``) has devices whose arrays carry
their device (``device_memory.on_device``), a current device, and ``cuda.Device`` to switch it;
every kernel launch and gemm records the device current when it runs."""

import emu_cupy
import numpy as np
import pytest
from device_memory import on_device

import luxlib
import luxlib.cuda
from luxlib._dispatch import trace


class _Recorded:
    """A kernel module or cuBLAS whose launches record the current device in ``seen``."""

    def __init__(self, inner, devices, seen):
        self.inner, self.devices, self.seen = inner, devices, seen

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_function(self, name):
        kernel = self.inner.get_function(name)

        def launch(*args):
            self.seen.append(self.devices.current)
            return kernel(*args)

        return launch

    def gemm_strided_batched(self, *args):
        self.seen.append(self.devices.current)
        return self.inner.gemm_strided_batched(*args)


@pytest.fixture
def gpu(monkeypatch):
    """``(stand-in cupy, devices seen by the launches)``."""
    cupy = emu_cupy.install(monkeypatch)
    seen = []
    modules, blas = luxlib.cuda.get_module, luxlib.cuda.get_blas()
    monkeypatch.setattr(luxlib.cuda, "get_module", lambda family: _Recorded(modules(family), cupy.devices, seen))
    recorded_blas = _Recorded(blas, cupy.devices, seen)
    monkeypatch.setattr(luxlib.cuda, "get_blas", lambda: recorded_blas)
    return cupy, seen


def _calls(rng):
    """``name -> (function, arguments)``: kernels, cuBLAS, and statistics arrays updated in place."""

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    x = f32(4, 6, 5, 3)
    xc, w = f32(2, 3, 6, 5), f32(4, 3, 3, 3)
    return {
        "fast_activation": (luxlib.fast_activation, ("gelu", f32(3, 40))),
        "dropout": (luxlib.dropout, (np.random.default_rng(3), x, 0.5, True)),
        "batchnorm": (luxlib.batchnorm, (x, f32(6), f32(6), np.zeros(6, np.float32), np.ones(6, np.float32), True,
                                         "relu", 0.1, 1e-5)),
        "dense": (luxlib.fused_dense_bias_activation, ("tanh", f32(5, 9), f32(7, 9), f32(5))),
        "conv": (luxlib.fused_conv_bias_activation, ("relu", w, xc, f32(4), luxlib.ConvDims(xc.shape, w.shape,
                                                                                           padding=1))),
    }


def _vjp(f, args, put):
    """Outputs and gradients of ``f`` on ``put``'s arrays (the cotangent made by ``put`` too)."""
    args = tuple(put(a) if isinstance(a, np.ndarray) else a for a in args)
    out, pullback = luxlib.vjp(f, *args)
    y = out[0] if isinstance(out, tuple) else out
    dy = put(np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype))
    grads = pullback(dy)
    arrays = [a for a in (out if isinstance(out, tuple) else (out,)) + grads + args if hasattr(a, "data")]
    return arrays


@pytest.mark.parametrize("name", list(_calls(np.random.default_rng(0))))
def test_a_call_runs_on_its_arrays_device(gpu, name):
    """Arrays on device 1 while device 0 is current: every launch of the forward and of the
    pullback (called later, with device 0 current again) runs on device 1, every output and
    gradient is there, the values are those of the same call on device 0, and device 0 is
    current again after each call."""
    cupy, seen = gpu
    f, args = _calls(np.random.default_rng(0))[name]
    want = _vjp(f, args, lambda a: np.array(a).view(on_device(0)))
    assert seen and set(seen) == {0} and cupy.devices.entered == []  # no switch on the current device
    seen.clear()
    with trace() as record:
        got = _vjp(f, args, lambda a: np.array(a).view(on_device(1)))
    assert record and all(kind == "gpu" for _, kind in record)
    assert seen and set(seen) == {1} and cupy.devices.current == 0
    assert cupy.devices.entered == [1, 1]  # the forward, then the pullback
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.data.device_id == 1
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_arrays_on_different_devices_are_refused(gpu):
    cupy, seen = gpu
    w, x, b = (np.ones(s, np.float32) for s in ((5, 9), (7, 9), (5,)))
    with pytest.raises(ValueError, match=r"fused_dense_bias_activation: the arrays must be on one GPU, got "
                                         r"weight \(5, 9\) on device 0, x \(7, 9\) on device 1, bias \(5,\) on device 0"):
        luxlib.fused_dense_bias_activation("relu", w.view(on_device(0)), x.view(on_device(1)), b.view(on_device(0)))
    assert seen == []


def test_a_cotangent_on_another_device_is_refused(gpu):
    cupy, seen = gpu
    x = np.ones((3, 4), np.float32).view(on_device(1))
    _, pullback = luxlib.vjp(luxlib.fast_activation, "relu", x)
    launches = len(seen)
    with pytest.raises(ValueError, match=r"fast_activation pullback: dy \(3, 4\) is on device 0, the forward ran on "
                                         r"device 1"):
        pullback(np.ones((3, 4), np.float32).view(on_device(0)))
    assert len(seen) == launches
