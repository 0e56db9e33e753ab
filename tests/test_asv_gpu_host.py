"""The asv benchmark of the GPU launch code's host time (asv_bench/benchmarks/bench_gpu_host.py)
times what it says: every call reaches the CUDA implementation, and teardown puts the
dispatch back."""

import importlib.util
from pathlib import Path

import pytest

import luxlib
from luxlib import _dispatch

PATH = Path(__file__).resolve().parents[1] / "asv_bench" / "benchmarks" / "bench_gpu_host.py"


def _module():
    spec = importlib.util.spec_from_file_location("bench_gpu_host", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _module()


@pytest.mark.parametrize("name", BENCH.GPUHostTime.params)
def test_each_call_runs_the_gpu_implementation(name):
    bench = BENCH.GPUHostTime()
    kind, mod, gpu_run = _dispatch._kind, luxlib.cuda._mod, _dispatch._GPU_RUN[0]
    try:
        bench.setup(name)
        with _dispatch.trace() as record:
            bench.time_call(name)
        bench.teardown(name)
        restored = (_dispatch._kind, luxlib.cuda._mod, _dispatch._GPU_RUN[0]) == (kind, mod, gpu_run)
    finally:  # whatever failed above, the other tests dispatch as usual
        _dispatch._kind, luxlib.cuda._mod = kind, mod
        _dispatch.set_gpu_run(gpu_run)
    assert record and all(backend == "gpu" for _, backend in record), record
    assert restored


def test_the_launch_benchmark_launches_nothing_and_puts_the_binding_back():
    from luxlib._kernels import launch

    before = launch.bind(0)
    try:
        bench = BENCH.LaunchHostTime()
        bench.setup()
        bench.time_launch()  # through luxlib's launcher to the launch function that does nothing
        assert launch.launch(1, (1,), (1,), bench.args, 0) == 0
        bench.teardown()
        with pytest.raises(RuntimeError, match="no launch function bound"):
            launch.launch(1, (1,), (1,), (), 0)
    finally:
        launch.bind(before)


def test_the_device_benchmark_runs_the_device_check_and_puts_cupy_back(monkeypatch):
    import sys

    from luxlib.cuda import _device

    calls = []
    real_run = _device.run
    monkeypatch.setattr(_device, "run", lambda *args: calls.append(args[0]) or real_run(*args))
    before = sys.modules.get("cupy")
    bench = BENCH.DeviceHostTime()
    bench.setup()
    try:
        bench.time_forward()
        bench.time_vjp_and_pullback()
        assert calls == ["op", "op"] and bench.slot == []  # both through the check; the pullback ran
    finally:
        bench.teardown()
    assert sys.modules.get("cupy") is before
