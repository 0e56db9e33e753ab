"""Where the host time of luxlib's small GPU calls goes, on a GPU (doc/gpu_runs.md).

Small ops are bound by host time (session 22: the small batched products took 25 us a call
in steady state against torch's 16, and most forwards were 1.1-1.4x torch per synchronized
call). For each case of ``launch_ab.cases`` plus two small batched products, this times
``--calls`` back-to-back calls without the profiler, then profiles as many with
:mod:`cProfile` and prints the time per call and the functions that take the most of it
(their own time, per call), and how much of it is luxlib's Python, CuPy's and the rest.
cProfile adds its own cost to every Python call, so the shares, not the profiled sums, are
what to read.

    python3 tools/gpu/host_profile.py [--calls 2000] [--top 12] [--json PATH]
"""

import argparse
import cProfile
import os
import pstats
import sys
import time

import numpy as np

import luxlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_ab import cases, dump, per_call  # noqa: E402 (this folder is no package)


#: ``(batch, n)`` of the benchmark's small batched products, ``n x n`` matrices
PRODUCTS = ((512, 64), (4096, 16))


def all_cases(xp, rng, products=PRODUCTS):
    """``launch_ab``'s cases and batched products of ``n x n`` matrices."""
    calls = cases(xp, rng)
    for b, n in products:
        a = xp.asarray(rng.standard_normal((b, n, n)).astype(np.float32))
        calls[f"batched_matmul {b}x{n}x{n}x{n}"] = lambda a=a: luxlib.batched_matmul(a, a)
    return calls


def owner(filename, name):
    """Whose code a profiled function is: ``luxlib``, ``cupy`` or ``other`` (the interpreter,
    NumPy, ctypes); CuPy's compiled functions show as built-ins named for their module."""
    if f"{os.sep}luxlib{os.sep}" in filename:
        return "luxlib"
    if "cupy" in filename or "cupy" in name:
        return "cupy"
    return "other"


def profile(call, n, sync, clock=time.perf_counter):
    """``(us per call unprofiled, rows)``: rows ``(us per call, calls per call, owner, name)``
    of the profiled run's functions by their own time, the largest first."""
    us = per_call(call, n, sync, clock)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        call()
    prof.disable()
    sync()
    rows = []
    for (filename, line, func), (_, ncalls, tottime, _, _) in pstats.Stats(prof).stats.items():
        where = func if filename == "~" else f"{os.path.basename(filename)}:{line}({func})"
        rows.append((tottime / n * 1e6, ncalls / n, owner(filename, func), where))
    return us, sorted(rows, reverse=True)


def report(case, us, rows, top):
    """Lines: the case, its time per call and each owner's share, then the ``top`` rows."""
    total = sum(r[0] for r in rows) or 1.0
    shares = {o: sum(r[0] for r in rows if r[2] == o) / total for o in ("luxlib", "cupy", "other")}
    lines = [f"{case}: {us:.2f} us a call; profiled shares " + ", ".join(f"{o} {s:.0%}" for o, s in shares.items())]
    lines += [f"    {t:8.2f} us {c:6.1f}x  {o:6s} {w}" for t, c, o, w in rows[:top]]
    return lines


def main(argv=None, products=PRODUCTS):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    import cupy

    sync = cupy.cuda.runtime.deviceSynchronize
    record = {}
    for case, call in all_cases(cupy, np.random.default_rng(0), products).items():
        us, rows = profile(call, args.calls, sync)
        print("\n".join(report(case, us, rows, args.top)), flush=True)
        record[case] = {"us_per_call": us, "rows": rows[: args.top]}
    dump(args.json, {"calls": args.calls, "cases": record})
    return 0


if __name__ == "__main__":
    sys.exit(main())
