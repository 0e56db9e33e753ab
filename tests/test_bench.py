"""Smoke tests of ``python -m luxlib.bench`` on tiny shapes (speed is never asserted)."""

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import luxlib
from luxlib.bench import CASES, main, report
from luxlib.bench.cases import import_torch, select
from luxlib.bench.device import CPU, DeviceUnavailable, get_device, to_numpy
from luxlib.bench.runner import run
from luxlib.bench.timing import _wake, interleaved

HAS_TORCH = import_torch() is not None


def _cuda_device():
    try:
        return get_device("cuda")
    except DeviceUnavailable:
        return None


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``--quick`` run over every case: ``(exit status, stdout, JSON record)``."""
    path = tmp_path_factory.mktemp("bench") / "out.json"
    # a subprocess: the tool sets thread counts and must be runnable as `python -m`;
    # it runs outside the source tree so that it imports the luxlib under test
    root = os.path.dirname(os.path.dirname(os.path.abspath(luxlib.__file__)))
    proc = subprocess.run(
        [sys.executable, "-m", "luxlib.bench", "--quick", "--json", str(path)],
        cwd=path.parent,
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout + proc.stderr, json.loads(path.read_text())


def test_quick_run_writes_machine_and_settings(quick):
    rc, out, result = quick
    assert rc == 0, out
    m = result["machine"]
    assert m["cpu_model"] and m["usable_cores"] >= 1 and m["threads"] >= 1
    assert m["numpy"] == np.__version__ and m["luxlib"] == luxlib.__version__
    assert (m["torch"] is not None) == HAS_TORCH
    assert result["settings"] == {
        "quick": True, "repeats": 3, "warmup": 1, "pause_s": 0.0, "threads": m["threads"], "device": "cpu",
        "calls_per_sample": 1,
    }
    assert "each timed sample: one call, to the end of its work" in out
    assert result["copy_bandwidth_gbs"] > 0 and "np.copyto" in result["copy_bandwidth_method"]
    assert "copy bandwidth" in out and "geometric mean of luxlib/torch" in out


def test_quick_run_covers_every_case(quick):
    _, out, result = quick
    assert [r["name"] for r in result["cases"]] == [c.name for c in CASES]
    for case, r in zip(CASES, result["cases"]):
        assert r["name"] in out
        if case.missing():
            assert r["skipped"] == "not in luxlib yet: " + ", ".join(case.missing())
            continue
        assert "skipped" not in r and "failed" not in r, r
        for mode in ("forward", "forward_backward"):
            m = r["modes"][mode]
            assert m["failed"] == {}, m["failed"]
            expected = {"luxlib", "numpy"} | ({"torch"} if HAS_TORCH else set())
            if getattr(case, "inplace", False) and mode == "forward_backward":
                expected.discard("torch")  # autograd has no in-place op on a leaf
            assert set(m["median_s"]) == expected
            assert all(len(m["times_s"][who]) == 3 for who in expected)
            for who, t in m["median_s"].items():
                assert t > 0
                assert m["rate"][who] == pytest.approx(m["amount"] / t / 1e9)
            for other in ("torch", "numpy"):
                if other in expected:
                    ratio = m["median_s"]["luxlib"] / m["median_s"][other]
                    assert m["ratio"][f"luxlib/{other}"] == pytest.approx(ratio)
            assert bool(m["pct_copy_bandwidth"]) == (r["metric"] == "GB/s")
            assert bool(m["pct_fresh_copy_bandwidth"]) == (r["metric"] == "GB/s")
            if r["metric"] == "GB/s":  # the same-size copy is timed, but no contender
                assert m["same_size_copy_s"] > 0 and set(m["pct_same_size_copy"]) == expected
                for who, t in m["median_s"].items():
                    assert m["pct_same_size_copy"][who] == pytest.approx(100 * m["same_size_copy_s"] / t)
            else:
                assert m["same_size_copy_s"] is None and m["pct_same_size_copy"] == {}


def test_contenders_agree_with_the_numpy_composition(quick):
    """The three contenders compute the same thing (random masks excepted)."""
    _, _, result = quick
    for case, r in zip(CASES, result["cases"]):
        if "modes" not in r:
            continue
        for mode, m in r["modes"].items():
            if case.random:
                assert m["check"] == {}
            else:
                assert "luxlib" in m["check"] and m["check_ok"], (r["name"], mode, m["check"])


def test_amounts_follow_the_stated_formulas(quick):
    _, _, result = quick
    by_name = {r["name"]: r for r in result["cases"] if "modes" in r}
    nbytes = 2 * 8 * 8 * 8 * 4  # quick activation shape (2, 8, 8, 8), float32
    if "fast_activation gelu" in by_name:
        modes = by_name["fast_activation gelu"]["modes"]
        assert (modes["forward"]["amount"], modes["forward_backward"]["amount"]) == (2 * nbytes, 5 * nbytes)
    if "dropout p=0.5" in by_name:
        modes = by_name["dropout p=0.5"]["modes"]
        assert (modes["forward"]["amount"], modes["forward_backward"]["amount"]) == (3 * nbytes, 6 * nbytes)
    if "batched_matmul 64x256x256x256" in by_name:
        modes = by_name["batched_matmul 64x256x256x256"]["modes"]
        assert (modes["forward"]["amount"], modes["forward_backward"]["amount"]) == (2 * 4 * 8**3, 6 * 4 * 8**3)


def test_summary_is_the_geometric_mean_of_the_ratios(quick):
    _, _, result = quick
    for mode in ("forward", "forward_backward"):
        ratios = [r["modes"][mode]["ratio"]["luxlib/numpy"] for r in result["cases"] if "modes" in r]
        expected = math.exp(np.mean(np.log(ratios))) if ratios else None
        assert result["summary"]["geomean_luxlib/numpy"][mode] == pytest.approx(expected)


def test_missing_op_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.delattr(luxlib, "groupnorm", raising=False)
    path = tmp_path / "r.json"
    assert main(["--quick", "--filter", "groupnorm", "--json", str(path)]) == 0
    (record,) = json.loads(path.read_text())["cases"]
    assert record["skipped"] == "not in luxlib yet: groupnorm" and "modes" not in record
    out = capsys.readouterr().out
    assert "skipped (not in luxlib yet: groupnorm)" in out
    assert "geometric mean of luxlib/torch time ratios (< 1: luxlib faster): forward -" in out


def test_failing_contender_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    def broken(act, x):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(luxlib, "fast_activation", broken)
    path = tmp_path / "r.json"
    assert main(["--quick", "--filter", "fast_activation relu", "--repeats", "1", "--json", str(path)]) == 0
    (record,) = json.loads(path.read_text())["cases"]
    assert record["modes"]["forward"]["failed"] == {"luxlib": "RuntimeError: kernel exploded"}
    assert "luxlib" not in record["modes"]["forward"]["median_s"]
    assert record["modes"]["forward"]["ratio"] == {}
    assert record["modes"]["forward_backward"]["failed"]["luxlib"].startswith("TypeError: vjp")
    assert "luxlib failed: RuntimeError: kernel exploded" in capsys.readouterr().out


def test_filter_repeats_and_threads(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    before = luxlib.get_num_threads() if hasattr(luxlib, "get_num_threads") else None
    assert main(["--quick", "--filter", "MATMUL 4096", "--repeats", "2", "--threads", "1", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert [r["name"] for r in result["cases"]] == ["batched_matmul 4096x16x16x16"]
    assert result["settings"]["repeats"] == 2 and result["machine"]["threads"] == 1
    if before is not None:
        assert luxlib.get_num_threads() == before  # restored afterwards


def test_list_cuda_and_bad_arguments(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(c.name in out for c in CASES)
    if not _cuda_device():
        assert main(["--device", "cuda"]) == 2  # scripts notice; the reason is printed
        assert "--device cuda" in capsys.readouterr().err
    assert main(["--filter", "no such op"]) == 1
    assert main(["--repeats", "0"]) == 1
    assert main(["--calls", "0"]) == 1


def test_png_is_skipped_silently_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    png = tmp_path / "r.png"
    args = ["--quick", "--filter", "gemm", "--repeats", "1", "--json", str(tmp_path / "r.json"), "--png", str(png)]
    assert main(args) == 0
    assert not png.exists() and "chart" not in capsys.readouterr().out


def test_png_is_written_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "r.png"
    args = ["--quick", "--filter", "gemm", "--repeats", "1", "--json", str(tmp_path / "r.json"), "--png", str(png)]
    assert main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interleaved_rotates_the_order_and_reports_failures():
    calls = []

    def contender(name):
        return lambda: calls.append(name) or name

    def broken():
        raise ValueError("nope")

    times, first, failed = interleaved({"a": contender("a"), "b": contender("b"), "x": broken, "c": contender("c")}, 3)
    assert first == {"a": "a", "b": "b", "c": "c"} and failed == {"x": "ValueError: nope"}
    assert calls == list("abc" "abc" "bca" "cab")  # warm-up, then rounds starting one later each
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_json_has_no_nan(tmp_path):
    path = tmp_path / "r.json"
    report.write_json({"a": [math.nan, 1.0, {"b": math.inf}]}, path)
    assert json.loads(path.read_text()) == {"a": [None, 1.0, {"b": None}]}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_numpy_composition_stays_float32(case):
    """The NumPy baseline must not silently compute in float64 (that would flatter luxlib)."""
    numpy = case.contender("numpy", case.arrays(quick=True))
    outputs = (numpy.forward(),) + tuple(numpy.forward_backward())
    assert all(o.dtype == np.float32 for o in outputs), [o.dtype for o in outputs]


def test_pause_sleeps_and_wakes_the_contender_before_each_timed_call(monkeypatch):
    events = []
    monkeypatch.setattr("luxlib.bench.timing.time.sleep", lambda s: events.append(("sleep", s)))
    monkeypatch.setattr("luxlib.bench.timing._wake", lambda f: events.append("wake") or f())
    times, _, _ = interleaved({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, 2, pause=0.25)
    sleep = ("sleep", 0.25)
    # warm-up round, then per timed call: sleep, untimed wake-up calls, the timed call
    assert events == ["a", "b"] + [sleep, "wake", "a", "a", sleep, "wake", "b", "b",
                                   sleep, "wake", "b", "b", sleep, "wake", "a", "a"]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2}


def test_wake_keeps_calling_for_the_given_time():
    calls = []
    start = time.perf_counter()
    _wake(lambda: calls.append(1), seconds=0.01)
    assert time.perf_counter() - start >= 0.01 and len(calls) > 1
    calls.clear()
    _wake(lambda: calls.append(1), seconds=0)
    assert calls == [1]  # at least once


def test_first_outputs_are_copies_taken_before_later_calls_change_them():
    buf = np.zeros(3)

    def in_place():
        buf[...] += 1
        return buf, buf[:1]

    _, first, _ = interleaved({"inplace": in_place}, repeats=4, warmup=2)
    assert buf[0] == 6  # 2 warm-up + 4 timed calls
    np.testing.assert_array_equal(first["inplace"][0], np.ones(3))
    np.testing.assert_array_equal(first["inplace"][1], np.ones(1))


def test_back_to_back_samples_finish_once_and_give_the_time_per_call(monkeypatch):
    """A sample of ``calls`` calls: the calls back to back, one ``finish`` (the device's
    synchronization, timed too) after the last, the time divided by ``calls``; the first,
    checked, output and the warm-up calls are single calls, each finished."""
    clock, events = [0.0], []
    monkeypatch.setattr("luxlib.bench.timing.time.perf_counter", lambda: clock[0])

    def call():
        clock[0] += 1.0
        events.append("call")
        return len(events)

    def finish(out):
        clock[0] += 0.5
        events.append("finish")
        return out

    times, first, _ = interleaved({"a": call}, repeats=2, warmup=2, calls=4, finish=finish)
    assert times == {"a": [(4 * 1.0 + 0.5) / 4] * 2}
    assert first == {"a": 1}  # the output of the first call alone
    sample = ["call"] * 4 + ["finish"]
    assert events == ["call", "finish"] * 2 + sample * 2


class CountingDevice(CPU):
    """A device that records what the runner asks of it."""

    name = "counting"
    contenders = ("luxlib", "numpy")

    def __init__(self):
        self.finished = 0
        self.copied, self.copies = [], 0
        self.put = lambda arrays: {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in arrays.items()}

    def finish(self, out):
        self.finished += 1
        return out

    def torch_usable(self, torch):
        return False

    def info(self):
        return {"gpu": "none"}

    def copy_bandwidth(self, quick):
        return 1.0, "fake"

    def fresh_copy_bandwidth(self, quick):
        return None, "not measured"

    def same_size_copy(self, amount):
        self.copied.append(amount)

        def copy():
            self.copies += 1

        return copy


def test_run_on_a_device_waits_for_every_call_and_fields_its_contenders():
    dev = CountingDevice()
    cases = select("gemm") + select("instancenorm")  # GFLOP/s and GB/s rows
    result = run(cases, quick=True, repeats=2, device=dev)
    # per case and mode: one warm-up and two timed calls of each of the two contenders, and
    # of the device's copy of the row's bytes on the GB/s rows (instancenorm)
    gbs = [r for r in result["cases"] if r["metric"] == "GB/s"]
    assert dev.finished == len(cases) * 2 * 2 * (1 + 2) + len(gbs) * 2 * (1 + 2)
    assert dev.copies == len(gbs) * 2 * (1 + 2)
    assert dev.copied == [m["amount"] for r in gbs for m in r["modes"].values()]
    assert result["settings"]["device"] == "counting" and result["machine"]["gpu"] == "none"
    assert result["machine"]["torch"] is None and (result["copy_bandwidth_gbs"], result["copy_bandwidth_method"]) == (1.0, "fake")
    for r in result["cases"]:
        for m in r["modes"].values():
            assert set(m["median_s"]) == {"luxlib", "numpy"} and set(m["ratio"]) == {"luxlib/numpy"}
            assert m["check_ok"] and set(m["check"]) == {"luxlib"}
            # the device's copy figure gives percentages (GB/s rows), its missing fresh one none
            assert bool(m["pct_copy_bandwidth"]) == (r["metric"] == "GB/s") and m["pct_fresh_copy_bandwidth"] == {}
    assert "device: cuda" not in report.header(result)
    # a CUDA run's header names the GPU and whether the convolutions ran on cuDNN
    cuda = {**result, "settings": {**result["settings"], "device": "cuda"},
            "machine": {**result["machine"], "gpu": "H100", "gpu_memory_gib": 80, "cupy": "14.2.0",
                        "cudnn": "cuDNN 9.28.1 (libcudnn.so.9): GPU convolutions",
                        "cuda_launch": "luxlib's launcher"}}
    assert "\nluxlib's convolutions: cuDNN 9.28.1 (libcudnn.so.9): GPU convolutions\n" in report.header(cuda)
    assert "\nluxlib's kernel launches: luxlib's launcher\n" in report.header(cuda)


def test_back_to_back_run_finishes_once_a_sample_and_records_its_calls():
    dev = CountingDevice()
    cases = select("gemm")
    result = run(cases, quick=True, repeats=2, device=dev, calls=3)
    # per case and mode and contender: the first call, then two samples of 3 calls, each finished once
    assert dev.finished == len(cases) * 2 * 2 * (1 + 2)
    assert result["settings"]["calls_per_sample"] == 3
    assert "each timed sample: 3 back-to-back calls, one synchronization at the end" in report.header(result)
    assert all(m["check_ok"] for r in result["cases"] for m in r["modes"].values())


def test_to_numpy_reads_every_contenders_output():
    x = np.arange(3.0)
    assert to_numpy(x) is x
    if HAS_TORCH:
        import torch

        t = torch.arange(3.0, requires_grad=True) * 1
        np.testing.assert_array_equal(to_numpy(t), x)


def test_in_place_case_checks_each_mode_on_the_original_input(monkeypatch):
    # untimed wake-up calls run for a time, not a count, so an in-place contender's input
    # drifts by a different amount per contender; here 1, 2, 3, 1, ... calls per wake-up
    # make the counts differ deterministically: each mode must build its contenders
    # afresh for its first (checked) call
    from luxlib.bench.runner import run_case

    wakes = []

    def wake(f):
        wakes.append(f)
        for _ in range(1 + (len(wakes) - 1) % 3):
            f()

    monkeypatch.setattr("luxlib.bench.timing._wake", wake)
    (case,) = [c for c in CASES if c.name == "bias_activation_ relu"]
    record = run_case(case, quick=True, repeats=2, warmup=1, ceilings={}, pause=1e-6)
    assert wakes
    for mode, m in record["modes"].items():
        assert m["check_ok"] and m["check"], (mode, m["check"])
    # the same with samples of several calls: the checked output is still that of one call
    record = run_case(case, quick=True, repeats=2, warmup=1, ceilings={}, calls=3)
    for mode, m in record["modes"].items():
        assert m["check_ok"] and m["check"], (mode, m["check"])


def _record(rows):
    """A JSON record with ``rows``: ``(name, mode) -> {who: median seconds}``."""
    cases = {}
    for (name, mode), median in rows.items():
        cases.setdefault(name, {"name": name, "modes": {}})["modes"][mode] = {"median_s": median}
    return {"cases": list(cases.values())}


def test_compare_lines_up_rows_of_two_records(tmp_path, capsys):
    old = _record({("a", "forward"): {"luxlib": 2e-3, "torch": 1e-3},
                   ("a", "forward_backward"): {"luxlib": 4e-3, "torch": 4e-3},
                   ("gone", "forward"): {"luxlib": 1e-3}})
    new = _record({("a", "forward"): {"luxlib": 1e-3, "torch": 1e-3},
                   ("a", "forward_backward"): {"luxlib": 4e-3},  # torch did not run this time
                   ("b", "forward"): {"luxlib": 1e-3, "torch": 1e-3}})
    paths = [tmp_path / "old.json", tmp_path / "new.json"]
    for path, rec in zip(paths, (old, new)):
        path.write_text(json.dumps(rec))
    assert main(["--compare", *map(str, paths)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["a", "fwd", "2.000", "1.000", "0.50", "1.000", "1.000", "1.00"]
    assert lines[3].split() == ["a", "fwd+bwd", "4.000", "4.000", "1.00", "4.000", "-", "-"]
    assert lines[4].split()[:3] == ["b", "fwd", "-"] and "not in the old record" in lines[4]
    assert not any(line.startswith("gone") for line in lines)
    # geometric means over the rows both records have: luxlib sqrt(0.5 * 1), torch 1 (one row)
    assert lines[-1].startswith("geometric mean of new/old: luxlib 0.707, torch 1.000")
    assert main(["--compare", str(paths[0]), str(tmp_path / "missing.json")]) == 1
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    assert main(["--compare", str(paths[0]), str(tmp_path / "other.json")]) == 1
    assert "not two records of --json" in capsys.readouterr().err
