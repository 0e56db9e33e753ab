"""Thread count of the compiled kernels (the one place that decides it)."""

cdef extern from *:
    """
    #define LUXLIB_CYTHON_HEX_VERSION CYTHON_HEX_VERSION
    """
    long LUXLIB_CYTHON_HEX_VERSION

#: whether this build was compiled with OpenMP
OPENMP = bool(LUXLIB_OPENMP)
#: inputs smaller than this many elements run on one thread
SERIAL_THRESHOLD_ELEMENTS = SERIAL_THRESHOLD
#: the Cython version that generated these extensions
CYTHON_VERSION = "{}.{}.{}".format(
    (LUXLIB_CYTHON_HEX_VERSION >> 24) & 0xFF,
    (LUXLIB_CYTHON_HEX_VERSION >> 16) & 0xFF,
    (LUXLIB_CYTHON_HEX_VERSION >> 8) & 0xFF,
)

# 0: follow OpenMP's default (OMP_NUM_THREADS, threadpoolctl limits, CPU count)
cdef int _requested = 0


def set_num_threads(int n):
    """Use ``n`` threads (``n >= 1``), or OpenMP's default for ``n == 0``."""
    global _requested
    _requested = n


def get_num_threads():
    """Threads a large kernel runs on: 1 without OpenMP."""
    return num_threads_for(SERIAL_THRESHOLD)


cdef int num_threads_for(Py_ssize_t n_elements) noexcept nogil:
    if not LUXLIB_OPENMP or n_elements < SERIAL_THRESHOLD:
        return 1
    if _requested > 0:
        return _requested
    return omp_get_max_threads()
