"""Per-kernel device time of benchmark rows, luxlib's kernels against torch's, on a GPU
(doc/gpu_runs.md).

Session 22 left the 3x3 convolutions at 1.13x torch forward and 1.35x forward+backward in
steady state, and a few forwards just above torch. For each benchmark case whose name
contains one of the ``--filter`` strings (default :data:`ROWS`), each mode and each contender
(luxlib; torch where it runs on CUDA), this times ``--calls`` back-to-back calls (one
synchronization), then records as many under ``torch.profiler`` (CUDA activity: it sees
CuPy's kernels too) and prints the time per call, the kernels' device time per call, and
the kernels (and copies) that take it, the longest first.

    python3 tools/gpu/kernel_profile.py [--filter conv --filter dropout] [--calls 20] [--top 8] [--json PATH]
"""

import argparse
import collections
import os
import sys
import time

from luxlib.bench import cases as bench_cases
from luxlib.bench.device import get_device
from luxlib.bench.runner import MODES

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from launch_ab import dump, per_call  # noqa: E402 (this folder is no package)

#: the rows profiled by default: those above torch in session 22's steady state
ROWS = ("conv", "fast_activation relu", "dropout", "batched_matmul 512", "dense 1024->1024 relu")


def device_kernels(events, n):
    """``{name: (us per call, launches per call)}`` of the profiled events that ran on the
    device (kernels, copies, fills), the longest first."""
    total, count = collections.Counter(), collections.Counter()
    for e in events:
        if getattr(e.device_type, "name", str(e.device_type)) == "CUDA":
            total[e.name] += e.time_range.elapsed_us()
            count[e.name] += 1
    return {name: (us / n, count[name] / n) for name, us in total.most_common()}


def profile(f, n, sync, profiler, clock=time.perf_counter):
    """``(us per call, kernels)``: ``n`` back-to-back calls of ``f`` timed (one ``sync``),
    then ``n`` more recorded in ``profiler()`` (a context manager with ``events()``)."""
    us = per_call(f, n, sync, clock, synced=True)
    with profiler() as prof:
        for _ in range(n):
            f()
        sync()
    return us, device_kernels(prof.events(), n)


def report(row, us, kernels, top):
    """Lines: the row, its time per call and its kernels' device time, then the ``top`` kernels."""
    busy = sum(t for t, _ in kernels.values())
    lines = [f"{row}: {us:.1f} us a call, kernels {busy:.1f} us ({sum(c for _, c in kernels.values()):.1f} launches)"]
    lines += [f"    {t:9.1f} us {c:5.1f}x  {name[:110]}" for name, (t, c) in list(kernels.items())[:top]]
    return lines


def rows(filters, device, torch, quick=False):
    """``(row name, call)`` for each selected case, mode and contender on ``device`` (the
    cases' tiny shapes with ``quick``)."""
    for case in bench_cases.select():
        if not any(f.lower() in case.name.lower() for f in filters) or case.missing():
            continue
        a = device.put(case.arrays(quick))
        for who in ("luxlib", "torch") if torch is not None else ("luxlib",):
            contender = case.contender(who, a, torch)
            for mode in MODES:
                call = getattr(contender, mode)
                if call is not None:
                    yield f"{case.name} {mode} {who}", call


def main(argv=None, profiler=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--filter", action="append", help=f"case name substring (default: {', '.join(ROWS)})")
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="the cases' tiny shapes (a smoke test)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    device = get_device("cuda")
    torch = bench_cases.import_torch()
    torch = torch if device.torch_usable(torch) else None
    if profiler is None:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        def profiler():
            return torch_profile(activities=[ProfilerActivity.CUDA])

    record = {}
    for row, call in rows(args.filter or ROWS, device, torch, args.quick):
        us, kernels = profile(call, args.calls, lambda: device.finish(None), profiler)
        print("\n".join(report(row, us, kernels, args.top)), flush=True)
        record[row] = {"us_per_call": us, "kernels": kernels}
    dump(args.json, {"calls": args.calls, "rows": record})
    return 0


if __name__ == "__main__":
    sys.exit(main())
