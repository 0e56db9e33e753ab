"""Batched gemm, float32 and float64: ``c[i] = a[i] @ b[i]`` (BLAS or a small-product kernel).

Operands are 3-D arrays whose matrices BLAS can read as they are stored: rows of
``ld`` elements with unit column stride, or (``trans``) the transpose of such a
matrix. Any batch stride works; a batch of 1 broadcasts (batch stride 0). The glue
(``luxlib/_looped/matmul.py``) copies the rare operands that fit neither form.

Products of at most ``SMALL_PRODUCT`` multiply-adds run in a register-blocked C
kernel instead (``small_products``): there a BLAS call costs more than the math.

Parallelism: products run in a ``prange`` over the batch (guided schedule, so a
thread that starts late, e.g. on a core shared with another process, does not hold
the others up), each product on one thread (the caller limits BLAS to one thread
around the call when the products go to BLAS), except a few large ones (fewer
than 4 per thread), which run one after the other on BLAS's own threads. A ``c``
with a batch of 1 against a longer batch receives the sum of the products,
accumulated item after item (``beta = 1``) so that the result does not depend on
the thread count.
"""

from cython cimport floating
from cython.parallel cimport prange

from . cimport _fastmath  # LX_CLONES
from ._blas cimport gemm
from ._openmp_helpers cimport num_threads_for

cdef extern from *:
    """
    /* Small products without BLAS. B is read in place when its rows are contiguous
       whole vectors of W columns, else packed (zero-padded) into a stack panel. Tiles
       of LX_MM_ROWS rows x W columns are accumulated in vector registers (GCC/clang
       vector extensions; 8 independent accumulators hide the FMA latency) over the
       whole contraction, in order of p: the result does not depend on the thread
       count. Rows past m repeat row m - 1 and padded columns are zero; neither is
       stored. Other compilers get no small kernel (LX_MM_PACK 0: BLAS does all). */
    #if defined(__GNUC__)
    #define LX_MM_ROWS 8
    #define LX_MM_PACK 8192
    /* GCC 12 vectorizes the transposing copy with AVX-512 scatters, which are
       microcoded on AMD Zen 4: a 16^3 product with a transposed B took 0.26 us, not 0.19 */
    #if !defined(__clang__)
    #define LX_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
    #else
    #define LX_NO_VECTORIZE
    #endif
    /* Products with k <= LX_MM_BREG and n <= W on CPUs with AVX-512 (32 vector
       registers): all of (padded) B is held in k registers and each row of C is one
       chain of FMAs in order of p, the same sums as the tiled kernel (so results do not
       depend on the CPU). 13% faster than the tiles at 16^3 on Zen 4 (no B reloads);
       with 16 registers (AVX2) B would spill, so other CPUs keep the tiles. */
    #if defined(__x86_64__) && defined(__ELF__) && !defined(__clang__) && !defined(LUXLIB_NO_CLONES)
    #define LX_MM_BREG 16
    #define LX_MM_BREG_TARGET __attribute__((target("arch=x86-64-v4")))
    #define LX_MM_BREG_CPU (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") \\
                            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    #else
    #define LX_MM_BREG 0
    #define LX_MM_BREG_TARGET
    #define LX_MM_BREG_CPU 0
    #endif
    #define LX_DEFINE_SMALL_GEMM(T, S, W) \\
    typedef T lx_vec_##S __attribute__((vector_size(W * sizeof(T)))); \\
    /* c (+)= a @ b for k <= LX_MM_BREG, b as rows of exactly W (zero-padded) columns; rows \\
       of c four at a time (four independent FMA chains hide the latency; rows past m \\
       repeat row m - 1 and are not stored) */ \\
    static LX_MM_BREG_TARGET inline __attribute__((always_inline)) void lx_breg_body_##S( \\
            int m, int n, int k, const T* a, ptrdiff_t ars, ptrdiff_t acs, const T* bp, \\
            ptrdiff_t ldp, T* c, ptrdiff_t ldc, int accumulate) { \\
        lx_vec_##S bv[LX_MM_BREG > 0 ? LX_MM_BREG : 1]; \\
        _Pragma("GCC unroll 16") /* constant indices keep B in registers */ \\
        for (int p = 0; p < LX_MM_BREG; p++) \\
            if (p < k) memcpy(&bv[p], bp + p * ldp, sizeof bv[p]); \\
        for (int i0 = 0; i0 < m; i0 += 4) { \\
            const T* ar[4]; \\
            lx_vec_##S v[4]; \\
            _Pragma("GCC unroll 4") \\
            for (int r = 0; r < 4; r++) { \\
                ar[r] = a + (i0 + r < m ? i0 + r : m - 1) * ars; \\
                v[r] = (lx_vec_##S){0}; \\
            } \\
            _Pragma("GCC unroll 16") \\
            for (int p = 0; p < LX_MM_BREG; p++) \\
                if (p < k) { \\
                    _Pragma("GCC unroll 4") \\
                    for (int r = 0; r < 4; r++) v[r] += ar[r][p * acs] * bv[p]; \\
                } \\
            _Pragma("GCC unroll 4") /* constant indices keep v in registers */ \\
            for (int r = 0; r < 4; r++) { \\
                if (i0 + r >= m) break; \\
                T* cr = c + (i0 + r) * ldc; \\
                lx_vec_##S old, s = v[r]; \\
                if (n == W) { \\
                    if (accumulate) { memcpy(&old, cr, sizeof s); s += old; } \\
                    memcpy(cr, &s, sizeof s); \\
                } else { /* through an array: indexing a vector keeps it in memory */ \\
                    T t[W]; \\
                    memcpy(t, &s, sizeof t); \\
                    for (int w = 0; w < n; w++) cr[w] = accumulate ? cr[w] + t[w] : t[w]; \\
                } \\
            } \\
        } \\
    } \\
    static LX_MM_BREG_TARGET void lx_breg_gemm_##S(int m, int n, int k, \\
            const T* a, ptrdiff_t ars, ptrdiff_t acs, const T* bp, ptrdiff_t ldp, \\
            T* c, ptrdiff_t ldc, int accumulate) { \\
        if (acs == 1) /* rows of A contiguous: constant offsets, fewer live registers */ \\
            lx_breg_body_##S(m, n, k, a, ars, 1, bp, ldp, c, ldc, accumulate); \\
        else \\
            lx_breg_body_##S(m, n, k, a, ars, acs, bp, ldp, c, ldc, accumulate); \\
    } \\
    /* pack[p * np + j] = B[p, j] (0 for j >= n) for a B with contiguous columns */ \\
    static LX_NO_VECTORIZE void lx_pack_transposed_##S(int k, int n, const T* b, ptrdiff_t bcs, \\
                                                       T* pack, int np) { \\
        for (int j = 0; j < n; j++) \\
            for (int p = 0; p < k; p++) pack[p * np + j] = b[p + j * bcs]; \\
        for (int p = 0; p < k; p++) \\
            for (int j = n; j < np; j++) pack[p * np + j] = 0; \\
    } \\
    static LX_CLONES void lx_small_gemm_##S(int m, int n, int k, \\
            const T* a, ptrdiff_t ars, ptrdiff_t acs, const T* b, ptrdiff_t brs, ptrdiff_t bcs, \\
            T* c, ptrdiff_t ldc, int accumulate) { \\
        T pack[LX_MM_PACK]; \\
        const int np = (n + W - 1) / W * W; \\
        const T* bp = b; \\
        ptrdiff_t ldp = brs; \\
        if (bcs != 1 || n != np) { \\
            if (bcs == 1) /* rows of n not a multiple of W */ \\
                for (int p = 0; p < k; p++) \\
                    for (int j = 0; j < np; j++) pack[p * np + j] = j < n ? b[p * brs + j] : (T)0; \\
            else /* a transposed B: brs == 1 */ \\
                lx_pack_transposed_##S(k, n, b, bcs, pack, np); \\
            bp = pack; \\
            ldp = np; \\
        } \\
        if (np == W && k <= LX_MM_BREG && LX_MM_BREG_CPU) { \\
            lx_breg_gemm_##S(m, n, k, a, ars, acs, bp, ldp, c, ldc, accumulate); \\
            return; \\
        } \\
        for (int j0 = 0; j0 < np; j0 += W) { \\
            const int nj = n - j0 < W ? n - j0 : W; \\
            for (int i0 = 0; i0 < m; i0 += LX_MM_ROWS) { \\
                const T* ar[LX_MM_ROWS]; \\
                lx_vec_##S acc[LX_MM_ROWS]; \\
                for (int r = 0; r < LX_MM_ROWS; r++) { \\
                    ar[r] = a + (i0 + r < m ? i0 + r : m - 1) * ars; \\
                    acc[r] = (lx_vec_##S){0}; \\
                } \\
                for (int p = 0; p < k; p++) { \\
                    lx_vec_##S bv; \\
                    memcpy(&bv, bp + p * ldp + j0, sizeof bv); \\
                    for (int r = 0; r < LX_MM_ROWS; r++) acc[r] += ar[r][p * acs] * bv; \\
                } \\
                for (int r = 0; r < LX_MM_ROWS && i0 + r < m; r++) { \\
                    T* cr = c + (i0 + r) * ldc + j0; \\
                    lx_vec_##S v = acc[r], old; \\
                    if (nj == W) { \\
                        if (accumulate) { memcpy(&old, cr, sizeof v); v += old; } \\
                        memcpy(cr, &v, sizeof v); \\
                    } else \\
                        for (int w = 0; w < nj; w++) cr[w] = accumulate ? cr[w] + v[w] : v[w]; \\
                } \\
            } \\
        } \\
    }
    #else
    #define LX_MM_PACK 0
    #define LX_DEFINE_SMALL_GEMM(T, S, W) \\
    static void lx_small_gemm_##S(int m, int n, int k, const T* a, ptrdiff_t ars, ptrdiff_t acs, \\
            const T* b, ptrdiff_t brs, ptrdiff_t bcs, T* c, ptrdiff_t ldc, int accumulate) {}
    #endif
    LX_DEFINE_SMALL_GEMM(float, f, 16)
    LX_DEFINE_SMALL_GEMM(double, d, 8)
    """
    int MM_PACK "LX_MM_PACK"
    void small_gemm_f "lx_small_gemm_f"(int m, int n, int k, const float* a, Py_ssize_t ars,
                                        Py_ssize_t acs, const float* b, Py_ssize_t brs, Py_ssize_t bcs,
                                        float* c, Py_ssize_t ldc, int accumulate) noexcept nogil
    void small_gemm_d "lx_small_gemm_d"(int m, int n, int k, const double* a, Py_ssize_t ars,
                                        Py_ssize_t acs, const double* b, Py_ssize_t brs, Py_ssize_t bcs,
                                        double* c, Py_ssize_t ldc, int accumulate) noexcept nogil

cdef enum:
    # below this many multiply-adds in all, one thread (OpenMP and threadpoolctl
    # together cost ~15 us)
    PARALLEL_WORK = 1 << 20
    # products of this many multiply-adds run one by one on BLAS's threads when the
    # batch is too short to keep every thread busy (fewer than 4 per thread)
    LARGE_PRODUCT = 1 << 22
    ITEMS_PER_THREAD = 4
    # products of at most this many multiply-adds (32^3) run in the small kernel:
    # at 16^3 an sgemm call costs about as much as the kernel's whole product, and
    # OpenBLAS is 2-3x slower still with a transposed B (the backward's dz @ y^T);
    # from ~40^3 OpenBLAS's own kernels win on untransposed operands
    SMALL_PRODUCT = 1 << 15


def small_products(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint double):
    """Whether ``gemm_batched`` computes such products in its small kernel, not BLAS."""
    cdef Py_ssize_t width = 8 if double else 16
    return m * n * k <= SMALL_PRODUCT and k * ((n + width - 1) // width * width) <= MM_PACK


cdef inline void product(bint small, bint ta, bint tb, int m, int n, int k,
                         const floating* a, int lda, const floating* b, int ldb,
                         bint accumulate, floating* c) noexcept nogil:
    """``c (+)= op(a) @ op(b)`` (``ldc = n``) by the small kernel or BLAS."""
    cdef Py_ssize_t ars = 1 if ta else lda, acs = lda if ta else 1
    cdef Py_ssize_t brs = 1 if tb else ldb, bcs = ldb if tb else 1
    if not small:
        gemm(ta, tb, m, n, k, 1, a, lda, b, ldb, 1 if accumulate else 0, c, n)
    elif floating is float:
        small_gemm_f(m, n, k, a, ars, acs, b, brs, bcs, c, n, accumulate)
    else:
        small_gemm_d(m, n, k, a, ars, acs, b, brs, bcs, c, n, accumulate)

#: multiply-adds per product from which short batches run on BLAS's threads
LARGE_PRODUCT_WORK = LARGE_PRODUCT


def batch_threads(Py_ssize_t batch, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k):
    """Threads of the ``prange`` over the batch; 1 means products run one by one."""
    cdef Py_ssize_t work = m * n * k
    if batch < 2 or batch * work < PARALLEL_WORK:
        return 1
    cdef int nt = num_threads_for(batch * work)
    if work >= LARGE_PRODUCT and batch < ITEMS_PER_THREAD * nt:
        return 1
    return nt


def gemm_batched(const floating[:, :, :] a, bint ta, int lda,
                 const floating[:, :, :] b, bint tb, int ldb,
                 floating[:, :, ::1] c, int nt):
    """``c[i] = a[i] @ b[i]`` (summed over i when ``c`` has a batch of 1).

    ``a``'s matrices are stored row-major with row stride ``lda`` or, with ``ta``,
    column-major (``a[i].T`` row-major) with column stride ``lda``; likewise ``b``. ``nt > 1`` runs a ``prange`` of that many threads
    over the batch (BLAS must be limited to one thread by the caller).
    """
    cdef int m = c.shape[1], n = c.shape[2], k = a.shape[2]
    cdef Py_ssize_t batch = 0 if min(a.shape[0], b.shape[0]) == 0 else max(a.shape[0], b.shape[0])
    if a.shape[1] != m or b.shape[1] != k or b.shape[2] != n:
        raise ValueError("matmul kernels: operand shapes do not fit")
    if c.shape[0] not in (1, batch) or a.shape[0] not in (1, batch) or b.shape[0] not in (1, batch):
        raise ValueError("matmul kernels: batch sizes do not fit")
    if c.shape[0] == 0 or m == 0 or n == 0:
        return
    if batch == 0 or k == 0:  # empty products, or an empty sum over the batch
        c[:, :, :] = 0
        return
    # batch strides in elements; a batch of 1 broadcasts
    cdef Py_ssize_t item = sizeof(floating)
    cdef Py_ssize_t sa = 0 if a.shape[0] == 1 else a.strides[0] // item
    cdef Py_ssize_t sb = 0 if b.shape[0] == 1 else b.strides[0] // item
    cdef Py_ssize_t sc = 0 if c.shape[0] == 1 else c.strides[0] // item
    cdef const floating* pa = &a[0, 0, 0]
    cdef const floating* pb = &b[0, 0, 0]
    cdef floating* pc = &c[0, 0, 0]
    cdef bint small = small_products(m, n, k, floating is double)
    cdef Py_ssize_t i
    with nogil:
        if sc == 0 and batch > 1:  # sum over the batch, in batch order
            for i in range(batch):
                product(small, ta, tb, m, n, k, pa + i * sa, lda, pb + i * sb, ldb, i > 0, pc)
        else:
            for i in prange(batch, num_threads=nt, schedule="guided", use_threads_if=nt > 1):
                product(small, ta, tb, m, n, k, pa + i * sa, lda, pb + i * sb, ldb, False, pc + i * sc)
