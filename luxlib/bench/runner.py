"""Run the cases: threads, machine information, timing, correctness check, summary."""

import contextlib
import gc
import io
import math
import os
import platform
import statistics

import numpy as np

import luxlib

from .cases import import_torch
from .device import CPU, to_numpy
from .timing import interleaved

CONTENDERS = CPU.contenders  # the table's columns (a device may field fewer)
MODES = ("forward", "forward_backward")
#: norm-relative difference to the reference contender above which a row is flagged
CHECK_RTOL = 1e-3
#: the name under which bandwidth-bound rows time a copy of their own bytes
SAME_SIZE_COPY = "same-size copy"


def default_threads():
    """luxlib's thread count (all usable cores when luxlib does not report one)."""
    get = getattr(luxlib, "get_num_threads", None)
    return int(get()) if get is not None else len(os.sched_getaffinity(0))


@contextlib.contextmanager
def threads_set_to(n, torch=None):
    """Give luxlib, BLAS/OpenMP (threadpoolctl) and torch ``n`` threads inside the block."""
    from threadpoolctl import threadpool_limits

    lux_before = luxlib.get_num_threads() if hasattr(luxlib, "set_num_threads") else None
    torch_before = None if torch is None else torch.get_num_threads()
    try:
        with threadpool_limits(limits=n):
            if lux_before is not None:
                luxlib.set_num_threads(n)
            if torch is not None:
                torch.set_num_threads(n)
            yield
    finally:
        if lux_before is not None:
            luxlib.set_num_threads(lux_before)
        if torch_before is not None:
            torch.set_num_threads(torch_before)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown", []
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)  # the last CPU's
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return fields.get("model name", "unknown"), fields.get("flags", "").split()


def _show_config():
    show = getattr(luxlib, "show_config", None)
    if show is None:
        return None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        returned = show()
    return returned if isinstance(returned, str) else out.getvalue() or repr(returned)


_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def machine_info(threads, torch=None):
    """CPU, cores, library versions and BLAS configuration, for the JSON record."""
    from threadpoolctl import threadpool_info

    model, flags = _cpu_model()
    return {
        "cpu_model": model,
        "cpu_simd": [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512_bf16") if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": None if torch is None else torch.__version__,
        "luxlib": luxlib.__version__,
        "luxlib_memory_cache_bytes": luxlib.get_memory_cache_limit(),
        "luxlib_config": _show_config(),
        "threadpools": threadpool_info(),
        "env": {k: os.environ.get(k) for k in _ENV_VARS},
    }


def rel_diff(out, ref):
    """Largest norm-relative difference between two outputs (arrays or tuples of arrays)."""
    outs, refs = (out, ref) if isinstance(ref, tuple) else ((out,), (ref,))
    if len(outs) != len(refs):
        return math.inf
    worst = 0.0
    for o, r in zip(outs, refs):
        o, r = to_numpy(o).astype(np.float64), to_numpy(r).astype(np.float64)
        if o.shape != r.shape:
            return math.inf
        worst = max(worst, float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-30)))
    return worst


def _mode(case, contenders, mode, amount, repeats, warmup, pause, ceilings, device, calls):
    funcs = {who: getattr(c, mode) for who, c in contenders.items() if getattr(c, mode) is not None}
    if case.metric == "GB/s":  # timed in the same rounds, as the ceiling at this size
        funcs[SAME_SIZE_COPY] = device.same_size_copy(amount)
    times, first, failed = interleaved(funcs, repeats, warmup, pause, calls, device.finish)
    copy_times = times.pop(SAME_SIZE_COPY, None)
    first.pop(SAME_SIZE_COPY, None)
    failed.pop(SAME_SIZE_COPY, None)
    median = {who: statistics.median(t) for who, t in times.items()}
    copy_s = None if copy_times is None else statistics.median(copy_times)
    rate = {who: amount / t / 1e9 for who, t in median.items()}
    result = {
        "amount": amount,
        "median_s": median,
        "times_s": times,
        "failed": failed,
        "ratio": {
            f"luxlib/{other}": median["luxlib"] / median[other]
            for other in ("torch", "numpy")
            if "luxlib" in median and other in median
        },
        "rate": rate,
        **{
            key: {who: 100 * r / gbs for who, r in rate.items()} if case.metric == "GB/s" and gbs else {}
            for key, gbs in ceilings.items()
        },
        "same_size_copy_s": copy_s,
        "pct_same_size_copy": {} if copy_s is None else {who: 100 * copy_s / t for who, t in median.items()},
    }
    # the reference: the NumPy composition, or torch where the device fields no NumPy
    ref = next((who for who in ("numpy", "torch") if who in first), None)
    result["check_reference"] = ref
    if case.random or ref is None:
        result["check"] = {}
    else:
        result["check"] = {who: rel_diff(out, first[ref]) for who, out in first.items() if who != ref}
    result["check_ok"] = all(d <= CHECK_RTOL for d in result["check"].values())
    return result


def run_case(case, *, quick, repeats, warmup, ceilings, pause=0.0, torch=None, device=None, calls=1):
    """Time one case on ``device`` (default the CPU); returns its JSON record
    (``skipped`` says why when it did not run). ``ceilings`` maps ``"pct_..."`` record keys
    to the GB/s that bandwidth-bound rows are given as a percentage of; ``calls`` is the
    number of back-to-back calls in a timed sample (:func:`.timing.interleaved`)."""
    device = device or CPU()
    record = {"name": case.name, "family": case.family, "dtype": "float32"}
    record.update(metric=case.metric, formula=case.formula)
    missing = case.missing()
    if missing:
        record["skipped"] = "not in luxlib yet: " + ", ".join(missing)
        return record
    a = device.put(case.arrays(quick))
    record["shape"] = case.shape(a)
    amounts = case.amount(a)
    record["modes"] = {}
    for mode, amount in zip(MODES, amounts):
        # contenders built afresh for each mode: an in-place one changes its own input on
        # every call (a time-based number of calls), so each mode's first, checked, call
        # must see the original input
        contenders = {}
        for who in device.contenders:
            if who == "torch" and torch is None:
                continue
            try:
                contenders[who] = case.contender(who, a, torch)
            except Exception as exc:  # e.g. an op that rejects these arguments
                record.setdefault("failed", {})[who] = f"{type(exc).__name__}: {exc}"
        record["modes"][mode] = _mode(case, contenders, mode, amount, repeats, warmup, pause, ceilings, device, calls)
        del contenders
        gc.collect()
    return record


def geomean(values):
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(records):
    """Geometric means of luxlib/torch and luxlib/numpy time ratios per mode."""
    return {
        f"geomean_luxlib/{other}": {
            mode: geomean(r["modes"][mode]["ratio"].get(f"luxlib/{other}") for r in records if "modes" in r)
            for mode in MODES
        }
        for other in ("torch", "numpy")
    }


def run(cases, *, quick=False, repeats=None, warmup=1, pause=0.0, threads=None, device=None, on_case=None,
        on_start=None, calls=1):
    """Benchmark ``cases`` on ``device`` (a :mod:`.device` object, default the CPU);
    return the full JSON-able record. ``calls``: back-to-back calls per timed sample.

    ``on_start(header)`` is called with the settings and machine record before the
    first case, ``on_case(record)`` after each case (for streaming output).
    """
    device = device or CPU()
    torch = import_torch()
    if not device.torch_usable(torch):
        torch = None
    threads = threads or default_threads()
    repeats = repeats or (3 if quick else 7)
    records = []
    with threads_set_to(threads, torch):
        header = {
            "settings": {
                "quick": quick, "repeats": repeats, "warmup": warmup, "pause_s": pause, "threads": threads,
                "device": device.name, "calls_per_sample": calls,
            },
            "machine": {**machine_info(threads, torch), **device.info()},
        }
        header["copy_bandwidth_gbs"], header["copy_bandwidth_method"] = device.copy_bandwidth(quick)
        header["fresh_copy_bandwidth_gbs"], header["fresh_copy_bandwidth_method"] = device.fresh_copy_bandwidth(quick)
        ceilings = {
            "pct_copy_bandwidth": header["copy_bandwidth_gbs"],
            "pct_fresh_copy_bandwidth": header["fresh_copy_bandwidth_gbs"],
        }
        if on_start is not None:
            on_start(header)
        for case in cases:
            record = run_case(
                case, quick=quick, repeats=repeats, warmup=warmup, pause=pause, ceilings=ceilings,
                torch=torch, device=device, calls=calls,
            )
            records.append(record)
            if on_case is not None:
                on_case(record)
    return {**header, "cases": records, "summary": summarize(records)}
