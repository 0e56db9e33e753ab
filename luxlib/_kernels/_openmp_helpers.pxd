# Thread-count resolution shared by every compiled kernel.
#
# The shim below lets the extensions build and run without OpenMP: prange then
# compiles to a plain loop, and these functions report a single thread.

cdef extern from *:
    """
    #ifdef _OPENMP
        #include <omp.h>
        #define LUXLIB_OPENMP 1
    #else
        #define LUXLIB_OPENMP 0
        #define omp_get_max_threads() 1
    #endif
    """
    bint LUXLIB_OPENMP
    int omp_get_max_threads() noexcept nogil

# Inputs with fewer elements run serially: an OpenMP dispatch costs more than it saves.
cdef enum:
    SERIAL_THRESHOLD = 32768

cdef int num_threads_for(Py_ssize_t n_elements) noexcept nogil
