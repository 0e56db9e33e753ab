"""The GPU session's tools (``tools/gpu``), which run only on a lent GPU machine, checked here
so that they still run when one comes: the session script's stages, deadline and launcher
fallback with a stand-in Python, and the launcher A/B's rounds, its switch between the two
launch paths (stand-in driver and compiler) and its cases (on the emulated GPU: each reaches
luxlib's GPU path)."""

import importlib.util
import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from luxlib._dispatch import trace

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "gpu"
SESSION = TOOLS / "session.sh"


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _launch_ab():
    return _tool("launch_ab")


def _session(tmp_path, *stages, launcher="1 passed", prints="", **env):
    """Runs the session script with a stand-in Python that logs each call (its arguments and
    ``LUXLIB_CUDA_LAUNCH``) and prints ``launcher`` for the launcher's test (exit status 1
    unless it passed), ``prints`` for the others; returns (the process, the calls,
    summary.txt)."""
    calls = tmp_path / "calls"
    stub = tmp_path / "python"
    stub.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "launch=${{LUXLIB_CUDA_LAUNCH:-}} $*" >> {calls}
        if [[ "$*" == *test_launch.py* ]]; then
            echo "{launcher}"
            [[ "{launcher}" == *passed* ]]
        else
            echo "{prints}"
        fi
        """))
    stub.chmod(0o755)
    out = tmp_path / "out"
    run_env = dict(os.environ, PYTHON=str(stub), OUT=str(out), **env)
    run_env.pop("LUXLIB_CUDA_LAUNCH", None)
    proc = subprocess.run(["bash", str(SESSION), *stages], env=run_env, capture_output=True, text=True, timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").exists() else ""
    return proc, [line for line in lines if " -c " not in line], summary


def test_session_script_parses():
    subprocess.run(["bash", "-n", str(SESSION)], check=True)


def test_every_stage_imports_this_tree(tmp_path):
    """A lent machine builds luxlib in place and does not install it, and a script under
    tools/ has its own folder first on sys.path: the session puts the tree's root first."""
    log, stub = tmp_path / "paths", tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$PYTHONPATH" >> {log}\n')
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), OUT=str(tmp_path / "out"), PYTHONPATH="/elsewhere")
    subprocess.run(["bash", str(SESSION), "launch_ab"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
    paths = log.read_text().splitlines()
    assert paths and set(paths) == {f"{TOOLS.parents[1]}:/elsewhere"}


def test_session_refuses_an_unknown_stage(tmp_path):
    proc, calls, _ = _session(tmp_path, "tests", "benchmark")
    assert proc.returncode == 2 and "unknown stage 'benchmark'" in proc.stderr
    assert calls == []  # nothing ran


@pytest.mark.parametrize("launcher", ["1 passed", "1 failed", "1 skipped"])
def test_the_later_stages_use_luxlibs_launcher_only_where_its_test_passed(tmp_path, launcher):
    proc, calls, summary = _session(tmp_path, "launcher", "bench", "steady", launcher=launcher)
    passed = launcher == "1 passed"
    assert proc.returncode == (0 if passed else 1), proc.stdout + proc.stderr  # the launcher stage's status
    way = "" if passed else "cupy"
    assert len(calls) == 3 and "tests/cuda/test_launch.py" in calls[0] and calls[0].startswith("launch= ")
    assert calls[1].startswith(f"launch={way} -m luxlib.bench --device cuda --json")
    assert calls[2].startswith(f"launch={way} -m luxlib.bench --device cuda --calls 20")
    assert ("LUXLIB_CUDA_LAUNCH=cupy" in summary) != passed and "bench: exit 0" in summary


@pytest.mark.parametrize("skip, ran", [("no CUDA device", False), ("could not import 'cupy': No module", False),
                                       ("cuDNN 9 is not installed", True)])
def test_gpu_tests_skipped_for_want_of_a_device_fail_the_session(tmp_path, skip, ran):
    line = f"SKIPPED [3] tests/cuda/test_gpu.py:33: {skip}"
    proc, calls, summary = _session(tmp_path, "tests", prints=line)
    assert [c.split()[1:4] for c in calls] == [["-m", "pytest", "-q"]] * 2  # the GPU set, test_cupy_api
    assert line in summary  # every such skip is named
    assert (proc.returncode == 0) == ran and ("the GPU set did not run" in summary) != ran


def test_stages_past_the_deadline_are_skipped(tmp_path):
    proc, calls, summary = _session(tmp_path, "bench", DEADLINE="5")
    assert proc.returncode == 124 and calls == []
    assert "bench: skipped" in summary


def test_launch_ab_rounds_alternate_which_way_goes_first():
    ab = _launch_ab()
    events, now = [], [0.0]

    def clock():
        now[0] += 1.0
        return now[0]

    ways = {"cupy": lambda: events.append("cupy"), "luxlib": lambda: events.append("luxlib")}
    times = ab.alternate(ways, {"op": lambda: None}, rounds=4, n=10, sync=lambda: None, clock=clock)
    assert events == ["cupy", "luxlib", "luxlib", "cupy"] * 2
    assert times == {"op": {"cupy": [1e5] * 4, "luxlib": [1e5] * 4}}  # 1 s a sample over 10 calls
    lines = ab.report({"op": {"cupy": [2.0, 4.0, 3.0], "luxlib": [1.0, 1.5, 2.0]}})
    assert lines[1].split()[-3:] == ["3.00", "1.50", "0.500"]


def test_launch_ab_cases_run_on_the_gpu_path(monkeypatch):
    import emu_cupy

    cupy = emu_cupy.install(monkeypatch)
    for name, call in _launch_ab().cases(cupy, np.random.default_rng(0)).items():
        with trace() as record:
            call()
        assert record and all(backend == "gpu" for _, backend in record), (name, record)


def test_launch_ab_ways_switch_the_launch_path(monkeypatch):
    """Each way makes current kernels of its own, launched by CuPy's call ("cupy") or wrapped
    in luxlib's launcher ("luxlib"); the driver and the compiler are stand-ins here."""
    import luxlib.cuda
    from luxlib.cuda import _modules

    class Raw:
        def get_function(self, name):
            return ("raw kernel", name)

    driver = object()
    monkeypatch.setattr(_modules, "_driver", lambda: driver)
    monkeypatch.setattr(luxlib.cuda, "_mod", luxlib.cuda._mod)  # both restored after the test
    monkeypatch.setattr(luxlib.cuda, "get_blas", lambda: "cuBLAS")
    ways, sets = _launch_ab()._ways(lambda family: _modules._Kernels(family, compile=lambda f, ctype: Raw()))
    for way in ("luxlib", "cupy", "luxlib"):
        ways[way]()
        kernel = luxlib.cuda._mod("bias_activation").get_function("act_forward<float>")
        assert luxlib.cuda._mod("bias_activation") is sets[way]["bias_activation"]
        if way == "luxlib":
            assert isinstance(kernel, _modules._Launcher) and kernel._driver is driver
        else:
            assert kernel == ("raw kernel", "act_forward<float>")
    assert luxlib.cuda._mod("blas") == "cuBLAS"


SMALL = ((4, 8), (16, 4))  # batched products small enough for the emulated cuBLAS


def test_host_profile_on_the_emulated_gpu(monkeypatch, tmp_path, capsys):
    """Every case runs on the GPU path and is reported with its shares and top functions."""
    import emu_cupy

    cupy = emu_cupy.install(monkeypatch)
    tool = _tool("host_profile")
    names = list(tool.all_cases(cupy, np.random.default_rng(0), SMALL))
    assert set(_launch_ab().cases(cupy, np.random.default_rng(0))) < set(names)
    for name, call in tool.all_cases(cupy, np.random.default_rng(0), SMALL).items():
        with trace() as record:
            call()
        assert record and all(backend == "gpu" for _, backend in record), (name, record)
    out = tmp_path / "profile.json"
    assert tool.main(["--calls", "2", "--top", "3", "--json", str(out)], products=SMALL) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert [h.split(":")[0] for h in heads] == names
    assert all("luxlib" in h and "cupy" in h and "other" in h for h in heads)
    cases = json.loads(out.read_text())["cases"]
    assert list(cases) == names and all(0 < len(c["rows"]) <= 3 for c in cases.values())
    # luxlib's own Python is found among the profiled functions
    assert all(any(row[2] == "luxlib" for row in tool.profile(call, 2, lambda: None)[1])
               for call in tool.all_cases(cupy, np.random.default_rng(0), SMALL).values())


def test_host_profile_report():
    tool = _tool("host_profile")
    assert tool.owner("/x/luxlib/cuda/_blas.py", "matmul") == "luxlib"
    assert tool.owner("~", "<method 'get_function' of 'cupy._core.raw.RawModule' objects>") == "cupy"
    assert tool.owner("/usr/lib/python3.12/ctypes/__init__.py", "__getattr__") == "other"
    rows = [(3.0, 1.0, "cupy", "a"), (1.0, 2.0, "luxlib", "b"), (1.0, 1.0, "other", "c"), (0.5, 1.0, "luxlib", "d")]
    lines = tool.report("op", 9.5, rows[:3] + rows[3:], top=2)
    assert lines[0] == "op: 9.50 us a call; profiled shares luxlib 27%, cupy 55%, other 18%"
    assert len(lines) == 3 and lines[1].split()[-2:] == ["cupy", "a"] and lines[2].split()[-2:] == ["luxlib", "b"]


def test_host_profile_counts_per_call():
    """Rows are per call of the op: its own time and how often each function ran in it."""
    import time

    tool = _tool("host_profile")

    def op():
        time.sleep(0.001)
        time.sleep(0.001)

    us, rows = tool.profile(op, 5, lambda: None)
    (sleep,) = [r for r in rows if "sleep" in r[3]]
    assert sleep[1] == 2.0 and 1800 < sleep[0] < 4000 and us > 1800
    assert rows[0] == sleep  # the largest first


class _Event:
    def __init__(self, name, device, us):
        self.name, self.device_type = name, type("DeviceType", (), {"name": device})()
        self.time_range = type("Interval", (), {"elapsed_us": lambda _: us})()


def test_kernel_profile_sums_the_device_events():
    tool = _tool("kernel_profile")
    events = [_Event("gemm", "CUDA", 30.0), _Event("im2col", "CUDA", 10.0), _Event("gemm", "CUDA", 50.0),
              _Event("aten::conv2d", "CPU", 500.0), _Event("Memcpy DtoD", "CUDA", 4.0)]
    kernels = tool.device_kernels(events, 2)
    assert kernels == {"gemm": (40.0, 1.0), "im2col": (5.0, 0.5), "Memcpy DtoD": (2.0, 0.5)}
    assert list(kernels) == ["gemm", "im2col", "Memcpy DtoD"]  # the longest first
    lines = tool.report("conv forward luxlib", 60.0, kernels, top=2)
    assert lines[0] == "conv forward luxlib: 60.0 us a call, kernels 47.0 us (2.0 launches)"
    assert len(lines) == 3 and lines[1].split()[-1] == "gemm" and lines[2].split()[-1] == "im2col"


def test_kernel_profile_on_the_emulated_gpu(monkeypatch, tmp_path, capsys):
    """The selected benchmark rows run on luxlib's GPU path, each profiled for as many calls
    as it was timed (torch takes part only where it runs on CUDA: not here)."""
    import contextlib

    import emu_cupy

    emu_cupy.install(monkeypatch)
    tool = _tool("kernel_profile")
    recorded = []

    @contextlib.contextmanager
    def profiler():
        prof = type("Prof", (), {"events": lambda _: [_Event("k", "CUDA", 6.0 * len(recorded))]})()
        recorded.append(prof)
        yield prof

    out = tmp_path / "kernels.json"
    argv = ["--quick", "--filter", "conv 3x3 64", "--filter", "layernorm", "--calls", "3", "--json", str(out)]
    assert tool.main(argv, profiler=profiler) == 0
    names = [f"{case} {mode} luxlib" for case in ("layernorm", "conv 3x3 64->64 56x56")
             for mode in ("forward", "forward_backward")]
    heads = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert heads == names and len(recorded) == 4
    rows = json.loads(out.read_text())["rows"]
    assert list(rows) == names and [r["kernels"]["k"] for r in rows.values()] == [[2.0 * i, 1 / 3] for i in range(1, 5)]
    from luxlib.bench.device import get_device

    for name, call in tool.rows(["conv 3x3 64", "layernorm"], get_device("cuda"), None, quick=True):
        with trace() as record:
            call()
        assert record and all(backend == "gpu" for _, backend in record), (name, record)


@pytest.mark.parametrize("synced", [False, True])
def test_per_call_times_host_time_or_up_to_the_devices_end(synced):
    """The tools' one timing: 3 untimed calls, a sync, then n timed calls; kernel_profile's
    timing waits for the device (``synced``), the host-time tools' does not."""
    events, now = [], [0.0]

    def clock():
        events.append("t")
        now[0] += 2.0
        return now[0]

    us = _launch_ab().per_call(lambda: events.append("c"), 4, lambda: events.append("s"), clock, synced=synced)
    assert us == 2.0 / 4 * 1e6
    timed = ["c"] * 4 + (["s", "t"] if synced else ["t"])
    assert "".join(events) == "ccc" + "st" + "".join(timed) + "s"
