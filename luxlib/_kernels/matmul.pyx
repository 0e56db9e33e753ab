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
the thread count. ``gemm_batched_pair`` runs two such products (the backward's
``dx`` and ``dy``) item by item in one parallel loop.

Before a BLAS call, an operand stored transposed may be transposed into a
per-thread buffer (where OpenBLAS measured slower on that transpose combination),
and the operands of mid-sized products in large batches are read through once
("touch": they come from DRAM faster that way than through OpenBLAS's packing).
See doc/dense.md.
"""

from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc

from . cimport _fastmath  # LX_CLONES
from ._blas cimport gemm
from ._openmp_helpers cimport num_threads_for

cdef extern from *:
    """
    #if defined(__GNUC__) && !defined(__clang__)
    #define LX_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
    #else
    #define LX_NO_VECTORIZE
    #endif
    /* AVX-512 code paths (x86-64-v4 functions chosen at run time; GCC only, like LX_CLONES) */
    #if defined(__x86_64__) && defined(__ELF__) && !defined(__clang__) && !defined(LUXLIB_NO_CLONES)
    #include <immintrin.h>
    #define LX_MM_AVX512 1
    #define LX_MM_AVX512_TARGET __attribute__((target("arch=x86-64-v4")))
    #define LX_MM_AVX512_CPU (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") \\
                              && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    #else
    #define LX_MM_AVX512 0
    #define LX_MM_AVX512_TARGET
    #define LX_MM_AVX512_CPU 0
    #endif
    #if LX_MM_AVX512
    /* dst[j * ldd + i] = src[i * lds + j] for a 16 x 16 float block, in registers
       (unpack, then 64-bit, 128-bit and 256-bit lane shuffles) */
    static LX_MM_AVX512_TARGET inline void lx_transpose16_f(const float* src, ptrdiff_t lds,
                                                           float* dst, ptrdiff_t ldd) {
        __m512 r[16], t[16];
        for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + i * lds);
        for (int i = 0; i < 16; i += 2) {
            t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
        }
        for (int i = 0; i < 16; i += 4) {
            r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
            r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
            r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (int i = 0; i < 16; i += 8)
            for (int j = 0; j < 4; j++) {
                t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
                t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xDD);
            }
        for (int j = 0; j < 8; j++) {
            r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
            r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
        }
        for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + i * ldd, r[i]);
    }
    static LX_MM_AVX512_TARGET void lx_transpose_avx512_f(int rows, int cols, const float* src,
                                                         ptrdiff_t lds, float* dst, ptrdiff_t ldd) {
        for (int i = 0; i + 16 <= rows; i += 16)
            for (int j = 0; j + 16 <= cols; j += 16)
                lx_transpose16_f(src + i * lds + j, lds, dst + j * ldd + i, ldd);
    }
    #endif
    /* dst[j * ldd + i] = src[i * lds + j] (i < rows, j < cols); float32 by 16 x 16
       register blocks on AVX-512, the rest (and float64) by a scalar copy in blocks of
       16 x 16, the order that keeps both sides' lines in L1. Scalar because GCC 12
       vectorizes it with AVX-512 scatters, microcoded on AMD Zen 4: a 16^3 product with
       a transposed B took 0.26 us, not 0.19 */
    #define LX_DEFINE_TRANSPOSE(T, S, FAST) \\
    static LX_NO_VECTORIZE void lx_transpose_##S(int rows, int cols, const T* src, ptrdiff_t lds, \\
                                                 T* dst, ptrdiff_t ldd) { \\
        int done_r = 0, done_c = 0; \\
        if (FAST && rows >= 16 && cols >= 16 && LX_MM_AVX512_CPU) { \\
            lx_transpose_avx512_f(rows, cols, (const float*)src, lds, (float*)dst, ldd); \\
            done_r = rows / 16 * 16; \\
            done_c = cols / 16 * 16; \\
        } \\
        for (int i0 = 0; i0 < rows; i0 += 16) \\
            for (int j0 = 0; j0 < cols; j0 += 16) { \\
                if (i0 < done_r && j0 < done_c) continue; \\
                const int i1 = rows - i0 < 16 ? rows : i0 + 16, j1 = cols - j0 < 16 ? cols : j0 + 16; \\
                for (int i = i0; i < i1; i++) \\
                    for (int j = j0; j < j1; j++) dst[j * ldd + i] = src[i * lds + j]; \\
            } \\
    }
    #if LX_MM_AVX512
    LX_DEFINE_TRANSPOSE(float, f, 1)
    #else
    #define lx_transpose_avx512_f(...) ((void)0)
    LX_DEFINE_TRANSPOSE(float, f, 0)
    #endif
    LX_DEFINE_TRANSPOSE(double, d, 0)
    /* Read one byte of every 64-byte line of a matrix (rows x row_bytes, row stride
       ld_bytes): independent loads, so many lines are in flight at once (doc/dense.md,
       "touch"). */
    static unsigned char lx_touch(const char* p, int rows, ptrdiff_t row_bytes, ptrdiff_t ld_bytes) {
        unsigned char s = 0;
        for (int r = 0; r < rows; r++) {
            const volatile char* q = p + r * ld_bytes;
            for (ptrdiff_t o = 0; o < row_bytes; o += 64) s ^= q[o];
            s ^= q[row_bytes - 1];
        }
        return s;
    }
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
    /* Products with k <= LX_MM_BREG and n <= W on CPUs with AVX-512 (32 vector
       registers): all of (padded) B is held in k registers and each row of C is one
       chain of FMAs in order of p, the same sums as the tiled kernel (so results do not
       depend on the CPU). 13% faster than the tiles at 16^3 on Zen 4 (no B reloads);
       with 16 registers (AVX2) B would spill, so other CPUs keep the tiles. */
    #define LX_MM_BREG (LX_MM_AVX512 ? 16 : 0)
    #define LX_MM_BREG_TARGET LX_MM_AVX512_TARGET
    #define LX_MM_BREG_CPU LX_MM_AVX512_CPU
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
        /* rows of A contiguous: constant offsets, fewer live registers. Whole rows of C \\
           (n == W) get a copy of their own: the partial rows' store loop becomes a call \\
           to memcpy, across which B cannot stay in registers (0.10 us a 16^3 product \\
           with B in stack memory on Zen 4, 0.075 us without) */ \\
        if (acs == 1 && n == W) \\
            lx_breg_body_##S(m, W, k, a, ars, 1, bp, ldp, c, ldc, accumulate); \\
        else if (acs == 1) \\
            lx_breg_body_##S(m, n, k, a, ars, 1, bp, ldp, c, ldc, accumulate); \\
        else \\
            lx_breg_body_##S(m, n, k, a, ars, acs, bp, ldp, c, ldc, accumulate); \\
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
            else { /* a transposed B: brs == 1 */ \\
                lx_transpose_##S(n, k, b, bcs, pack, np); \\
                for (int p = 0; p < k; p++) \\
                    for (int j = n; j < np; j++) pack[p * np + j] = 0; \\
            } \\
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
    unsigned char touch "lx_touch"(const char* p, int rows, Py_ssize_t row_bytes, Py_ssize_t ld_bytes) noexcept nogil
    void transpose_f "lx_transpose_f"(int rows, int cols, const float* src, Py_ssize_t lds,
                                      float* dst, Py_ssize_t ldd) noexcept nogil
    void transpose_d "lx_transpose_d"(int rows, int cols, const double* src, Py_ssize_t lds,
                                      double* dst, Py_ssize_t ldd) noexcept nogil

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
    # BLAS products whose operand is stored transposed get that operand transposed
    # into a per-thread buffer (at most PACK_ELEMENTS) first, in the ranges where that
    # measured faster (float32, 2 threads, forward+backward, process CPU time): a
    # transposed A (the backward's x^T @ dz, column-major "NT" in OpenBLAS) from 128^3
    # up to 256^3 multiply-adds (-4% at both), a transposed B (dz @ y^T, "TN") up to
    # 64^3 (-10% at 64^3; OpenBLAS's small-matrix "TN" path took twice the "NN" time)
    PACK_A_MIN = 1 << 21
    PACK_A_MAX = 1 << 24
    PACK_B_MAX = 1 << 18
    PACK_ELEMENTS = 1 << 17
    # BLAS products from 80^3 multiply-adds whose a[i] and b[i] hold at most
    # TOUCH_ELEMENTS (they fit in L2) in a batch whose a and b exceed TOUCH_BYTES
    # (likely not in L3) are read through once, line by line, before the gemm
    TOUCH_MIN = 1 << 19
    TOUCH_ELEMENTS = 1 << 17
    TOUCH_BYTES = 1 << 24


def small_products(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint double):
    """Whether ``gemm_batched`` computes such products in its small kernel, not BLAS."""
    cdef Py_ssize_t width = 8 if double else 16
    return m * n * k <= SMALL_PRODUCT and k * ((n + width - 1) // width * width) <= MM_PACK


cdef int pack_plan(bint small, bint ta, bint tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k) noexcept:
    """Which operand a product transposes into the thread's buffer: 0 none, 1 a, 2 b."""
    cdef Py_ssize_t work = m * n * k
    if small:
        return 0
    if ta and PACK_A_MIN <= work <= PACK_A_MAX and m * k <= PACK_ELEMENTS:
        return 1
    if tb and work <= PACK_B_MAX and k * n <= PACK_ELEMENTS:
        return 2
    return 0


def packed_operand(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, bint ta, bint tb, bint double):
    """``"a"``, ``"b"`` or None: the operand that such a product hands to BLAS as a
    transposed copy (the other flag) instead of in place."""
    return (None, "a", "b")[pack_plan(small_products(m, n, k, double), ta, tb, m, n, k)]


cdef struct Plan:
    # one batched product c[i] (+)= op(a[i]) @ op(b[i]); batch strides in elements
    # (0: a broadcast batch of 1)
    int m, n, k, lda, ldb
    bint ta, tb, small, summed  # summed: c (a batch of 1) receives the sum over the batch
    bint touch  # read a[i] and b[i] through before the gemm
    int pack  # 1: op(a), 2: op(b) is transposed into the thread's buffer for BLAS
    Py_ssize_t batch, sa, sb, sc


cdef Plan make_plan(const floating[:, :, :] a, bint ta, int lda,
                    const floating[:, :, :] b, bint tb, int ldb, floating[:, :, ::1] c) except *:
    cdef Plan p
    p.m, p.n, p.k = c.shape[1], c.shape[2], a.shape[2]
    p.ta, p.tb, p.lda, p.ldb = ta, tb, lda, ldb
    p.batch = 0 if min(a.shape[0], b.shape[0]) == 0 else max(a.shape[0], b.shape[0])
    if a.shape[1] != p.m or b.shape[1] != p.k or b.shape[2] != p.n:
        raise ValueError("matmul kernels: operand shapes do not fit")
    if c.shape[0] not in (1, p.batch) or a.shape[0] not in (1, p.batch) or b.shape[0] not in (1, p.batch):
        raise ValueError("matmul kernels: batch sizes do not fit")
    cdef Py_ssize_t item = sizeof(floating)
    p.sa = 0 if a.shape[0] == 1 else a.strides[0] // item
    p.sb = 0 if b.shape[0] == 1 else b.strides[0] // item
    p.sc = 0 if c.shape[0] == 1 else c.strides[0] // item
    p.summed = c.shape[0] == 1 and p.batch > 1
    p.small = small_products(p.m, p.n, p.k, floating is double)
    p.pack = pack_plan(p.small, ta, tb, p.m, p.n, p.k)
    cdef Py_ssize_t operands = <Py_ssize_t>p.k * (p.m + p.n)
    p.touch = (not p.small and <Py_ssize_t>p.m * p.n * p.k >= TOUCH_MIN
               and operands <= TOUCH_ELEMENTS and p.batch * operands * item > TOUCH_BYTES)
    return p


cdef inline Py_ssize_t buffer_size(const Plan* p) noexcept nogil:
    """Elements of the thread buffer that ``p``'s packing needs."""
    if p.pack == 1:
        return <Py_ssize_t>p.m * p.k
    if p.pack == 2:
        return <Py_ssize_t>p.k * p.n
    return 0


cdef inline void _transpose(int rows, int cols, const floating* src, Py_ssize_t lds,
                            floating* dst, Py_ssize_t ldd) noexcept nogil:
    """``dst = src.T`` for a ``rows x cols`` block (the float or double kernel)."""
    if floating is float:
        transpose_f(rows, cols, src, lds, dst, ldd)
    else:
        transpose_d(rows, cols, src, lds, dst, ldd)


cdef inline void product(const Plan* p, Py_ssize_t i, const floating* a, const floating* b,
                         floating* c, bint accumulate, floating* buf) noexcept nogil:
    """``c (+)= op(a[i]) @ op(b[i])`` (``ldc = n``) by the small kernel or BLAS."""
    cdef bint ta = p.ta, tb = p.tb
    cdef int m = p.m, n = p.n, k = p.k, lda = p.lda, ldb = p.ldb
    a += i * p.sa
    b += i * p.sb
    c += i * p.sc
    cdef Py_ssize_t it = sizeof(floating)
    if p.touch:
        touch(<const char*>a, k if ta else m, it * (m if ta else k), it * lda)
        touch(<const char*>b, n if tb else k, it * (k if tb else n), it * ldb)
    if buf != NULL and p.pack == 1:  # a stored (k, m): make it (m, k)
        _transpose(k, m, a, lda, buf, k)
        a, ta, lda = buf, False, k
    elif buf != NULL and p.pack == 2:  # b stored (n, k): make it (k, n)
        _transpose(n, k, b, ldb, buf, n)
        b, tb, ldb = buf, False, n
    cdef Py_ssize_t ars = 1 if ta else lda, acs = lda if ta else 1
    cdef Py_ssize_t brs = 1 if tb else ldb, bcs = ldb if tb else 1
    if not p.small:
        gemm(ta, tb, m, n, k, 1, a, lda, b, ldb, 1 if accumulate else 0, c, n)
    elif floating is float:
        small_gemm_f(m, n, k, a, ars, acs, b, brs, bcs, c, n, accumulate)
    else:
        small_gemm_d(m, n, k, a, ars, acs, b, brs, bcs, c, n, accumulate)


cdef void run(const Plan* p, const floating* a, const floating* b, floating* c,
              const Plan* p2, const floating* a2, const floating* b2, floating* c2,
              int nt) noexcept nogil:
    """Items of ``p`` (and of ``p2`` when not NULL, item by item) over the batch."""
    cdef Py_ssize_t size = buffer_size(p), i
    if p2 != NULL and buffer_size(p2) > size:
        size = buffer_size(p2)
    cdef floating* buf = NULL
    if p.summed:  # in batch order
        buf = <floating*>malloc(size * sizeof(floating)) if size else NULL
        for i in range(p.batch):
            product(p, i, a, b, c, i > 0, buf)
        free(buf)
        return
    with parallel(num_threads=nt, use_threads_if=nt > 1):
        # thread-private; without it (out of memory) BLAS reads the operand as stored
        buf = <floating*>malloc(size * sizeof(floating)) if size else NULL
        for i in prange(p.batch, schedule="guided"):
            product(p, i, a, b, c, False, buf)
            if p2 != NULL:
                product(p2, i, a2, b2, c2, False, buf)
        free(buf)

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


cdef bint empty(const Plan* p, floating[:, :, ::1] c):
    """Handle an empty problem (nothing, or zeros); whether there was one."""
    if c.shape[0] == 0 or p.m == 0 or p.n == 0:
        return True
    if p.batch == 0 or p.k == 0:  # empty products, or an empty sum over the batch
        c[:, :, :] = 0
        return True
    return False


def gemm_batched(const floating[:, :, :] a, bint ta, int lda,
                 const floating[:, :, :] b, bint tb, int ldb,
                 floating[:, :, ::1] c, int nt):
    """``c[i] = a[i] @ b[i]`` (summed over i when ``c`` has a batch of 1).

    ``a``'s matrices are stored row-major with row stride ``lda`` or, with ``ta``,
    column-major (``a[i].T`` row-major) with column stride ``lda``; likewise ``b``.
    ``nt > 1`` runs a ``prange`` of that many threads over the batch (BLAS must be
    limited to one thread by the caller).
    """
    cdef Plan p = make_plan(a, ta, lda, b, tb, ldb, c)
    if empty(&p, c):
        return
    with nogil:
        run(&p, &a[0, 0, 0], &b[0, 0, 0], &c[0, 0, 0], NULL, NULL, NULL, NULL, nt)


def gemm_batched_pair(const floating[:, :, :] a, bint ta, int lda,
                      const floating[:, :, :] b, bint tb, int ldb, floating[:, :, ::1] c,
                      const floating[:, :, :] a2, bint ta2, int lda2,
                      const floating[:, :, :] b2, bint tb2, int ldb2, floating[:, :, ::1] c2,
                      int nt):
    """``c[i] = a[i] @ b[i]`` and ``c2[i] = a2[i] @ b2[i]``, both for item i in turn.

    One parallel loop for both products (the backward's ``dx`` and ``dy``, which share
    ``dz[i]``: the second product finds it in cache). Neither ``c`` may be a sum over
    the batch; otherwise as :func:`gemm_batched`.
    """
    cdef Plan p = make_plan(a, ta, lda, b, tb, ldb, c)
    cdef Plan p2 = make_plan(a2, ta2, lda2, b2, tb2, ldb2, c2)
    if p.batch != p2.batch or p.summed or p2.summed:
        raise ValueError("matmul kernels: the pair's batches differ, or one is a sum")
    cdef bint done = empty(&p, c), done2 = empty(&p2, c2)
    if done and done2:
        return
    if done2:
        return gemm_batched(a, ta, lda, b, tb, ldb, c, nt)
    if done:
        return gemm_batched(a2, ta2, lda2, b2, tb2, ldb2, c2, nt)
    with nogil:
        run(&p, &a[0, 0, 0], &b[0, 0, 0], &c[0, 0, 0], &p2, &a2[0, 0, 0], &b2[0, 0, 0], &c2[0, 0, 0], nt)
