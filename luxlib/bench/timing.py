"""The interleaved timer and the copy-bandwidth probe."""

import gc
import statistics
import time

import numpy as np


def interleaved(funcs, repeats, warmup=1, pause=0.0, calls=1, finish=None):
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
        and untimed calls of the same contender (see :func:`_wake`): the sleep lets
        the worker threads of the previous contender's pools (OpenBLAS, each
        library's OpenMP runtime), which spin for a while after a call, stop
        competing for the cores; the untimed calls wake the contender's own pools,
        so the timed call measures it in steady state, alone.
    calls : int
        Calls in each timed sample, back to back; the sample's time is divided by ``calls``.
    finish : callable, optional
        ``finish(output)`` waits until the work a call queued is done (a device
        synchronization); it ends every untimed call and every timed sample, whose time
        includes it. So with ``calls=1`` a sample is one call's latency (host time and
        device time in a row); with more, the time per call in steady state, where the host
        queues the next calls while the device works (torch.utils.benchmark's way: one
        synchronization per block of calls), as in a training loop.

    Returns
    -------
    times : dict
        ``name -> list of seconds`` (per call), for the contenders that did not raise.
    first : dict
        ``name -> copy of the output of the first warm-up call`` (a copy: an
        in-place contender's output is its input, which later calls change).
    failed : dict
        ``name -> "ExceptionType: message"`` for contenders that raised (not timed).

    Examples
    --------
    >>> times, first, failed = interleaved({"sum": lambda: sum(range(10))}, repeats=3)
    >>> len(times["sum"]), first["sum"], failed
    (3, 45, {})
    """
    finish = finish or (lambda out: out)
    first, failed = {}, {}
    for name, f in funcs.items():
        try:
            first[name] = _snapshot(finish(f()))
        except Exception as exc:  # a contender that cannot run is reported, not fatal
            failed[name] = f"{type(exc).__name__}: {exc}"
    live = [name for name in funcs if name not in failed]
    for _ in range(max(warmup, 1) - 1):
        for name in live:
            finish(funcs[name]())
    times = {name: [] for name in live}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for k in range(len(live)):
                name = live[(r + k) % len(live)]
                f = funcs[name]
                if pause:
                    time.sleep(pause)
                    _wake(lambda: finish(f()))
                start = time.perf_counter()
                for _ in range(calls - 1):
                    f()
                finish(f())
                times[name].append((time.perf_counter() - start) / calls)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times, first, failed


def _snapshot(out):
    """A copy of ``out``: arrays (NumPy or anything with ``copy``/``clone``), tuples of them."""
    if isinstance(out, tuple):
        return tuple(_snapshot(o) for o in out)
    for method in ("clone", "copy"):  # torch tensors have both; clone is the deep one
        if hasattr(out, method):
            return getattr(out, method)()
    return out


def _wake(f, seconds=0.02):
    """Call ``f`` untimed for at least ``seconds`` (at least once).

    One call is not enough for sub-millisecond work: a worker thread that slept
    through the pause can take a scheduler tick (~4 ms) to come back, and only
    sustained work keeps the pool awake.
    """
    end = time.perf_counter() + seconds
    f()
    while time.perf_counter() < end:
        f()


def copy_bandwidth(nbytes=256 * 2**20, repeats=5, fresh=False):
    """Measure the memory bandwidth of one copy of a float32 array, on one thread.

    By default ``np.copyto`` between two arrays written once before timing, so that page
    faults are not measured; with ``fresh``, ``src.copy()``: a new array each time, as an
    out-of-place op allocates its output (above glibc's mmap threshold, 32 MiB at most,
    every such array is new memory that the kernel zeroes on first touch). Each copy
    counts ``2 * nbytes`` (source read once, destination written once: the same rule
    the op rows use).

    Returns
    -------
    float
        GB/s (1e9 bytes per second) of the median copy.
    """
    src = np.ones(nbytes // 4, np.float32)
    dst = np.zeros_like(src)
    copy = src.copy if fresh else (lambda: np.copyto(dst, src))
    times, _, _ = interleaved({"copy": copy}, repeats)
    return 2 * src.nbytes / statistics.median(times["copy"]) / 1e9
