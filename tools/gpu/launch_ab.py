"""Host time per call of luxlib's GPU ops: their kernels launched by luxlib's launcher against
CuPy's own ``RawKernel`` call, on a GPU (doc/cuda.md, "Launches"; doc/gpu_runs.md).

Both ways run in one process, on the same arrays, and each round alternates which goes first
(a harness that always ran one first favoured it by up to ~30% on session 12's H100). A
sample is the host time of ``--calls`` back-to-back calls with no synchronization inside (the
device synchronizes before and after, outside the timing), divided by their number; the
report gives each case's median over the rounds, per way, and their ratio.

    python3 tools/gpu/launch_ab.py [--rounds 10] [--calls 300] [--json PATH]

Exit status 1 where luxlib's launcher is not bound (no CUDA driver, ``LUXLIB_CUDA_LAUNCH=cupy``)
or a way's kernels were not launched the way it names.
"""

import argparse
import json
import statistics
import sys
import time

import numpy as np

import luxlib
import luxlib.cuda
from luxlib.cuda import _modules


def cases(xp, rng):
    """``name -> call``: small ops (host time decides their speed) on arrays of ``xp``, each a
    forward, and one forward with its pullback."""

    def a(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(np.float32))

    x, c, rm, rv = a(16, 32, 8, 8), a(32), xp.zeros(32, np.float32), xp.ones(32, np.float32)
    w33, xc, bc = a(16, 16, 3, 3), a(8, 16, 16, 16), a(16)
    cdims = luxlib.ConvDims(xc.shape, w33.shape, padding=1)
    w, xd, bd = a(256, 256), a(64, 256), a(256)
    gen = np.random.default_rng(1)
    dy = a(64, 256)

    def dense_vjp():
        y, pullback = luxlib.vjp(luxlib.fused_dense_bias_activation, "relu", w, xd, bd)
        return pullback(dy)

    return {
        "fast_activation relu 16": lambda v=a(16): luxlib.fast_activation("relu", v),
        "bias_activation gelu 16x32x8x8": lambda: luxlib.bias_activation("gelu", x, c),
        "dropout 16x32x8x8": lambda: luxlib.dropout(gen, x, 0.5, True),
        "batchnorm training 16x32x8x8": lambda: luxlib.batchnorm(x, c, c, rm, rv, True, "relu", 0.1, 1e-5),
        "groupnorm 16x32x8x8 g4": lambda: luxlib.groupnorm(x, c, c, 4, "relu", 1e-5),
        "layernorm 64x256": lambda v=a(64, 256), s=a(256): luxlib.layernorm(v, s, s, "gelu", (1,), 1e-5),
        "dense 64x256->256 relu": lambda: luxlib.fused_dense_bias_activation("relu", w, xd, bd),
        "dense 64x256->256 relu fwd+bwd": dense_vjp,
        "conv 3x3 8x16x16x16": lambda: luxlib.fused_conv_bias_activation("relu", w33, xc, bc, cdims),
    }


def per_call(call, n, sync, clock=time.perf_counter, synced=False):
    """Microseconds per call of ``n`` back-to-back calls of ``call`` after 3 untimed ones, the
    device synchronized (``sync()``) before and after them: their host time alone, or with
    ``synced`` up to the end of their device work."""
    for _ in range(3):
        call()
    sync()
    t0 = clock()
    for _ in range(n):
        call()
    if synced:
        sync()
    t = clock() - t0
    sync()
    return t / n * 1e6


def dump(path, record):
    """Write ``record`` as JSON to ``path`` (nothing without one)."""
    if path:
        with open(path, "w") as f:
            json.dump(record, f, indent=1)


def alternate(ways, calls, rounds, n, sync, clock=time.perf_counter):
    """``{case: {way: [us per call, one per round]}}``. ``ways`` maps a name to a function that
    makes that way current; round ``r`` takes the ways in order, reversed when ``r`` is odd,
    for each case of ``calls`` (``name -> call``): a few untimed calls, then ``n`` timed ones
    between two ``sync()`` s."""
    times = {case: {way: [] for way in ways} for case in calls}
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(ways)[::-1]
        for case, call in calls.items():
            for way in order:
                ways[way]()
                times[case][way].append(per_call(call, n, sync, clock))
    return times


def report(times):
    """Lines of a table: per case, each way's median and the ratio of the second way to the
    first."""
    ways = list(next(iter(times.values())))
    lines = [f"{'case':34s}" + "".join(f"{w + ' us':>14s}" for w in ways) + f"{ways[-1] + '/' + ways[0]:>16s}"]
    for case, per_way in times.items():
        med = [statistics.median(per_way[w]) for w in ways]
        lines.append(f"{case:34s}" + "".join(f"{m:14.2f}" for m in med) + f"{med[-1] / med[0]:16.3f}")
    return lines


def _ways(kernels_of=_modules._Kernels):
    """``(ways, kernel sets)``: "cupy" and "luxlib", each making its own kernel modules
    (``kernels_of(family)``) current in ``luxlib.cuda`` with the launch of its name."""
    bound, mod = _modules._driver, luxlib.cuda._mod
    ways, sets = {}, {}
    for way, driver in (("cupy", lambda: None), ("luxlib", bound)):
        kernels = {family: kernels_of(family) for family in _modules.FAMILIES}
        sets[way] = kernels

        def make_current(kernels=kernels, driver=driver):
            _modules._driver = driver
            luxlib.cuda._mod = lambda family: kernels[family] if family in kernels else mod(family)

        ways[way] = make_current
    return ways, sets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)

    import cupy

    if _modules._driver() is None:
        print(f"launch_ab: luxlib's launcher is not bound ({_modules.launch_status()})", file=sys.stderr)
        return 1
    ways, sets = _ways()
    times = alternate(ways, cases(cupy, np.random.default_rng(0)), args.rounds, args.calls,
                      cupy.cuda.runtime.deviceSynchronize)
    for way, kernels in sets.items():
        launched = [k for m in kernels.values() for k in m._kernels.values()]
        if not launched or any(isinstance(k, _modules._Launcher) != (way == "luxlib") for k in launched):
            print(f"launch_ab: the {way} way's kernels were not launched by {way}", file=sys.stderr)
            return 1
    print(f"host time per call, median of {args.rounds} rounds of {args.calls} calls, rounds alternating")
    print("\n".join(report(times)))
    dump(args.json, {"rounds": args.rounds, "calls": args.calls, "us_per_call": times})
    return 0


if __name__ == "__main__":
    sys.exit(main())
