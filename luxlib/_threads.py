"""BLAS at one thread around the OpenMP regions that call BLAS per thread.

A multithreaded BLAS called from every OpenMP worker would oversubscribe the cores,
so kernels that run many gemms in a ``prange`` do it inside
:func:`single_threaded_blas`. The threadpoolctl controller is built once (that
costs milliseconds; a limit through the cached controller costs ~10 us) and only
on first use, so ``import luxlib`` does not load threadpoolctl.
"""

import contextlib
import functools


@functools.cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


@contextlib.contextmanager
def single_threaded_blas():
    """Limit every loaded BLAS to one thread inside the ``with`` block."""
    with _blas_controller().limit(limits=1):
        yield
