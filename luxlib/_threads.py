"""BLAS at one thread around the OpenMP regions that call BLAS per thread.

A multithreaded BLAS called from every OpenMP worker would oversubscribe the cores,
so kernels that run many gemms in a ``prange`` do it inside
:func:`single_threaded_blas`. The threadpoolctl controllers are found once (that
costs milliseconds) and only on first use, so ``import luxlib`` does not load
threadpoolctl.

Most BLAS builds (OpenBLAS on its own pthreads, MKL, BLIS) keep one thread count for
the whole process, so the calls that run at the same time from several Python threads
share one limit: the first to enter sets it, the last to leave restores the counts the
first found. A limit per call would be lifted by one call's exit under another call
still running, and that call's exit would then restore the 1 it had found, leaving
BLAS at one thread for good. OpenBLAS built on OpenMP keeps a count per calling thread:
each call limits and restores its own.
"""

import contextlib
import functools
import threading

_lock = threading.Lock()
_holders = 0  # calls inside single_threaded_blas now, all Python threads together
_saved = []  # the process-wide counts the first of them found


@functools.cache
def _controllers():
    """``(process-wide, per-thread, release)``: the BLAS libraries' threadpoolctl
    controllers by where their thread count lives, and a function that lets any thread
    change OpenBLAS's count next."""
    import threadpoolctl

    libs = threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers
    per_thread = [lc for lc in libs if lc.internal_api == "openblas" and lc.threading_layer == "openmp"]
    shared = [lc for lc in libs if lc not in per_thread]
    # threadpoolctl >= 3.6 lets only the thread that last changed OpenBLAS's process-wide
    # count change it again until that is cleared; the first and last holders of the
    # shared limit can be different threads
    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    return shared, per_thread, (lambda: clear(force=True)) if clear is not None else (lambda: None)


def _set(libs, counts, release):
    if not libs:
        return
    release()
    for lc, n in zip(libs, counts):
        if n is not None:
            lc.set_num_threads(n)
    release()


@contextlib.contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS to one thread inside the ``with`` block."""
    global _holders, _saved
    shared, per_thread, release = _controllers()
    with _lock:
        if _holders == 0:
            _saved = [lc.get_num_threads() for lc in shared]
            _set(shared, [1] * len(shared), release)
        _holders += 1
    try:
        own = [lc.get_num_threads() for lc in per_thread]
        _set(per_thread, [1] * len(per_thread), release)
        try:
            yield
        finally:
            _set(per_thread, own, release)
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _set(shared, _saved, release)
