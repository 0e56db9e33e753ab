# Philox4x32-10 (Random123), the counter-based generator behind the dropout masks.
#
# Bit for bit the reference luxlib/_generic/philox.py; doc/dropout.md has the
# contract (key, counter layout, u, keep test). Written in C (a verbatim block) so
# that the CUDA kernel can mirror it line for line (luxlib_philox4x32_10) and so that
# the bulk generator can use AVX-512 or AVX2 intrinsics, chosen at run time from the
# CPU (the build targets baseline x86-64, SSE2). Integer math: every path gives the
# same bits.

from libc.stdint cimport uint32_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>

    /* Replace the counter c[0..3] by its Philox4x32-10 output block under key (k0, k1). */
    static inline void luxlib_philox4x32_10(uint32_t *c, uint32_t k0, uint32_t k1)
    {
        uint32_t c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
        for (int r = 0; r < 10; r++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * c0;  /* round multipliers M0, M1 */
            uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
            uint32_t t0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
            uint32_t t2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
            c1 = (uint32_t)p1;
            c3 = (uint32_t)p0;
            c0 = t0;
            c2 = t2;
            /* bumping after every round equals Random123's bump before all but the first */
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        c[0] = c0; c[1] = c1; c[2] = c2; c[3] = c3;
    }

    /* SIMD versions of the bulk generator (x86-64, GCC or clang; LUXLIB_NO_CLONES turns
       them off with the other instruction-set versions). Lane l of a vector holds block
       base + perm(l), perm chosen so that the in-lane 4x4 transposes (unpack) that turn
       the counter words into interleaved output leave whole 128-bit groups of words in
       output order: no cross-lane shuffles. The 32x32 -> 64-bit products come from
       vpmuludq on the even and the odd 32-bit lanes. Two independent groups of blocks go
       through the rounds side by side: one group's chain of dependent multiplies leaves
       the multipliers idle (AMD Zen 4: 20% faster than one group). */
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(LUXLIB_NO_CLONES)
    #define LUXLIB_PHILOX_SIMD 1
    #include <immintrin.h>

    #define LUXLIB_AVX512 __attribute__((target("avx512f")))
    #define LUXLIB_AVX2 __attribute__((target("avx2")))

    /* hi and lo halves of the 16 products a * m (m: the same value in every lane); lo
       by vpmulld rather than a second shuffle (Zen 4: 5% faster) */
    LUXLIB_AVX512 static inline void luxlib_mulhilo16(__m512i a, __m512i m, __m512i *hi, __m512i *lo)
    {
        __m512i even = _mm512_mul_epu32(a, m);
        __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
        *hi = _mm512_mask_shuffle_epi32(odd, 0x5555, even, _MM_PERM_CDAB);  /* even lanes from even */
        *lo = _mm512_mullo_epi32(a, m);
    }

    /* The words of the 32 blocks lo .. lo + 31 (high counter word hi), in order: out[0]
       holds blocks 0-3 (words 0-15), out[1] blocks 4-7, ... (2 groups of 16 side by side) */
    LUXLIB_AVX512 static inline void luxlib_philox32_avx512(uint32_t lo, uint32_t hi, uint32_t k0,
                                                            uint32_t k1, __m512i *out)
    {
        /* lane 4q + r holds block 4r + q of its group of 16 */
        const __m512i perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u), m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
        __m512i c0[2], c1[2], c2[2], c3[2];
        for (int g = 0; g < 2; g++) {
            c0[g] = _mm512_add_epi32(_mm512_set1_epi32((int)(lo + 16u * g)), perm);
            c1[g] = _mm512_set1_epi32((int)hi);
            c2[g] = c3[g] = _mm512_setzero_si512();
        }
        for (int r = 0; r < 10; r++) {
            for (int g = 0; g < 2; g++) {
                __m512i h0, l0, h1, l1;
                luxlib_mulhilo16(c0[g], m0, &h0, &l0);
                luxlib_mulhilo16(c2[g], m1, &h1, &l1);
                /* 0x96: the three-way xor */
                c0[g] = _mm512_ternarylogic_epi32(h1, c1[g], _mm512_set1_epi32((int)k0), 0x96);
                c2[g] = _mm512_ternarylogic_epi32(h0, c3[g], _mm512_set1_epi32((int)k1), 0x96);
                c1[g] = l1;
                c3[g] = l0;
            }
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        for (int g = 0; g < 2; g++) {
            __m512i u0 = _mm512_unpacklo_epi32(c0[g], c1[g]), u1 = _mm512_unpacklo_epi32(c2[g], c3[g]);
            __m512i u2 = _mm512_unpackhi_epi32(c0[g], c1[g]), u3 = _mm512_unpackhi_epi32(c2[g], c3[g]);
            out[4 * g] = _mm512_unpacklo_epi64(u0, u1);      /* blocks 0-3 of the group */
            out[4 * g + 1] = _mm512_unpackhi_epi64(u0, u1);  /* blocks 4-7 */
            out[4 * g + 2] = _mm512_unpacklo_epi64(u2, u3);
            out[4 * g + 3] = _mm512_unpackhi_epi64(u2, u3);
        }
    }

    /* The first nblocks - nblocks % 32 blocks; returns how many. */
    LUXLIB_AVX512 static Py_ssize_t luxlib_philox_words_avx512(
        uint32_t lo, uint32_t hi, Py_ssize_t nblocks, uint32_t k0, uint32_t k1, uint32_t *words)
    {
        Py_ssize_t j;
        for (j = 0; j + 32 <= nblocks; j += 32) {
            __m512i w[8];
            luxlib_philox32_avx512(lo + (uint32_t)j, hi, k0, k1, w);
            for (int q = 0; q < 8; q++)
                _mm512_storeu_si512((__m512i *)(words + 4 * j) + q, w[q]);
        }
        return j;
    }

    LUXLIB_AVX2 static inline void luxlib_mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
    {
        __m256i even = _mm256_mul_epu32(a, m);
        __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
        *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
        *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    }

    /* The first nblocks - nblocks % 16 blocks (2 groups of 8); returns how many. */
    LUXLIB_AVX2 static Py_ssize_t luxlib_philox_words_avx2(
        uint32_t lo, uint32_t hi, Py_ssize_t nblocks, uint32_t k0, uint32_t k1, uint32_t *words)
    {
        /* lane 4q + r holds block 2r + q of its group of 8 */
        const __m256i perm = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        const __m256i m0 = _mm256_set1_epi32((int)0xD2511F53u), m1 = _mm256_set1_epi32((int)0xCD9E8D57u);
        Py_ssize_t j;
        for (j = 0; j + 16 <= nblocks; j += 16) {
            __m256i c0[2], c1[2], c2[2], c3[2];
            for (int g = 0; g < 2; g++) {
                c0[g] = _mm256_add_epi32(_mm256_set1_epi32((int)(lo + (uint32_t)(j + 8 * g))), perm);
                c1[g] = _mm256_set1_epi32((int)hi);
                c2[g] = c3[g] = _mm256_setzero_si256();
            }
            uint32_t rk0 = k0, rk1 = k1;
            for (int r = 0; r < 10; r++) {
                for (int g = 0; g < 2; g++) {
                    __m256i h0, l0, h1, l1;
                    luxlib_mulhilo8(c0[g], m0, &h0, &l0);
                    luxlib_mulhilo8(c2[g], m1, &h1, &l1);
                    c0[g] = _mm256_xor_si256(_mm256_xor_si256(h1, c1[g]), _mm256_set1_epi32((int)rk0));
                    c2[g] = _mm256_xor_si256(_mm256_xor_si256(h0, c3[g]), _mm256_set1_epi32((int)rk1));
                    c1[g] = l1;
                    c3[g] = l0;
                }
                rk0 += 0x9E3779B9u;
                rk1 += 0xBB67AE85u;
            }
            for (int g = 0; g < 2; g++) {
                __m256i u0 = _mm256_unpacklo_epi32(c0[g], c1[g]), u1 = _mm256_unpacklo_epi32(c2[g], c3[g]);
                __m256i u2 = _mm256_unpackhi_epi32(c0[g], c1[g]), u3 = _mm256_unpackhi_epi32(c2[g], c3[g]);
                __m256i *out = (__m256i *)(words + 4 * (j + 8 * g));
                _mm256_storeu_si256(out, _mm256_unpacklo_epi64(u0, u1));      /* blocks 0-1 */
                _mm256_storeu_si256(out + 1, _mm256_unpackhi_epi64(u0, u1));  /* blocks 2-3 */
                _mm256_storeu_si256(out + 2, _mm256_unpacklo_epi64(u2, u3));
                _mm256_storeu_si256(out + 3, _mm256_unpackhi_epi64(u2, u3));
            }
        }
        return j;
    }
    #endif

    /* Instruction sets of luxlib_philox_words: the best the CPU has, or one forced
       (tests compare every path the CPU can run with the reference). */
    enum { LUXLIB_PHILOX_BEST = -1, LUXLIB_PHILOX_SCALAR = 0, LUXLIB_PHILOX_AVX2 = 1,
           LUXLIB_PHILOX_AVX512 = 2 };

    /* Whether this build and this CPU can run instruction set isa. */
    static int luxlib_philox_isa_supported(int isa)
    {
    #ifdef LUXLIB_PHILOX_SIMD
        if (isa == LUXLIB_PHILOX_AVX512)
            return __builtin_cpu_supports("avx512f");
        if (isa == LUXLIB_PHILOX_AVX2)
            return __builtin_cpu_supports("avx2");
    #endif
        return isa == LUXLIB_PHILOX_SCALAR || isa == LUXLIB_PHILOX_BEST;
    }

    /* The 4 words of blocks first .. first + nblocks - 1, block b at words[4 (b - first)];
       block b has the counter (b & 0xFFFFFFFF, b >> 32, 0, 0). The run must not cross a
       multiple of 2**32 (the high counter word is the same for the whole run). Integer
       math: the same bits on every instruction set; the SIMD loops leave a tail of
       fewer than 32 blocks to the scalar block function. isa must be supported. */
    static void luxlib_philox_words(int isa, uint64_t first, Py_ssize_t nblocks,
                                    uint32_t k0, uint32_t k1, uint32_t *words)
    {
        uint32_t lo = (uint32_t)first, hi = (uint32_t)(first >> 32);
        Py_ssize_t j = 0;
    #ifdef LUXLIB_PHILOX_SIMD
        if (isa == LUXLIB_PHILOX_BEST)
            isa = __builtin_cpu_supports("avx512f") ? LUXLIB_PHILOX_AVX512
                  : __builtin_cpu_supports("avx2") ? LUXLIB_PHILOX_AVX2 : LUXLIB_PHILOX_SCALAR;
        if (isa == LUXLIB_PHILOX_AVX512)
            j = luxlib_philox_words_avx512(lo, hi, nblocks, k0, k1, words);
        else if (isa == LUXLIB_PHILOX_AVX2)
            j = luxlib_philox_words_avx2(lo, hi, nblocks, k0, k1, words);
    #endif
        for (; j < nblocks; j++) {
            uint32_t c[4] = {lo + (uint32_t)j, hi, 0, 0};
            luxlib_philox4x32_10(c, k0, k1);
            words[4 * j] = c[0];
            words[4 * j + 1] = c[1];
            words[4 * j + 2] = c[2];
            words[4 * j + 3] = c[3];
        }
    }
    """
    void philox4x32_10 "luxlib_philox4x32_10"(uint32_t* c, uint32_t k0, uint32_t k1) noexcept nogil
    void philox_words "luxlib_philox_words"(int isa, uint64_t first, Py_ssize_t nblocks,
                                            uint32_t k0, uint32_t k1, uint32_t* words) noexcept nogil
    bint philox_isa_supported "luxlib_philox_isa_supported"(int isa) noexcept nogil
