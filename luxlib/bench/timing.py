"""The interleaved timer and the copy-bandwidth probe."""

import gc
import statistics
import time

import numpy as np


def interleaved(funcs, repeats, warmup=1, pause=0.0):
    """Time zero-argument callables round-robin, so drift hits every contender alike.

    Parameters
    ----------
    funcs : dict
        ``name -> callable``.
    repeats : int
        Timed calls per contender. Round ``r`` starts at contender ``r mod k`` so
        that no contender always runs first (right after another one's cache traffic).
    warmup : int
        Untimed rounds first (at least one: its outputs are returned for checking).
    pause : float
        When positive, each timed call is preceded by a sleep of ``pause`` seconds
        and one untimed call of the same contender: the sleep lets the worker
        threads of the previous contender's pools (OpenBLAS, each library's OpenMP
        runtime), which spin for a while after a call, stop competing for the
        cores; the untimed call wakes the contender's own pools, so the timed call
        measures it in steady state, alone.

    Returns
    -------
    times : dict
        ``name -> list of seconds``, for the contenders that did not raise.
    first : dict
        ``name -> output of the first warm-up call``.
    failed : dict
        ``name -> "ExceptionType: message"`` for contenders that raised (not timed).

    Examples
    --------
    >>> times, first, failed = interleaved({"sum": lambda: sum(range(10))}, repeats=3)
    >>> len(times["sum"]), first["sum"], failed
    (3, 45, {})
    """
    first, failed = {}, {}
    for name, f in funcs.items():
        try:
            first[name] = f()
        except Exception as exc:  # a contender that cannot run is reported, not fatal
            failed[name] = f"{type(exc).__name__}: {exc}"
    live = [name for name in funcs if name not in failed]
    for _ in range(max(warmup, 1) - 1):
        for name in live:
            funcs[name]()
    times = {name: [] for name in live}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for k in range(len(live)):
                name = live[(r + k) % len(live)]
                if pause:
                    time.sleep(pause)
                    funcs[name]()
                start = time.perf_counter()
                funcs[name]()
                times[name].append(time.perf_counter() - start)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times, first, failed


def copy_bandwidth(nbytes=256 * 2**20, repeats=5):
    """Measure the memory bandwidth of one ``np.copyto`` between two float32 arrays.

    ``np.copyto`` runs on one thread. Both arrays are written once before timing so
    that page faults are not measured; each copy counts ``2 * nbytes`` (source read
    once, destination written once: the same rule the op rows use).

    Returns
    -------
    float
        GB/s (1e9 bytes per second) of the median copy.
    """
    src = np.ones(nbytes // 4, np.float32)
    dst = np.zeros_like(src)
    times, _, _ = interleaved({"copy": lambda: np.copyto(dst, src)}, repeats)
    return 2 * src.nbytes / statistics.median(times["copy"]) / 1e9
