# Philox4x32-10 (Random123), the counter-based generator behind the dropout masks.
#
# Bit for bit the reference luxlib/_generic/philox.py; doc/dropout.md has the
# contract (key, counter layout, u, keep test). Written in C (a verbatim block) so
# that the CUDA kernel can mirror it line for line and so that the bulk generator
# can be compiled for several instruction sets: the build targets baseline x86-64
# (SSE2), where the 32x32 -> 64-bit multiplies vectorize only 2 per instruction;
# with GCC >= 12 on x86-64 glibc, `target_clones` adds AVX2 and AVX-512 versions
# picked at load time from the CPU (the same bits on every version: integer math).

from libc.stdint cimport uint32_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>

    #if defined(__x86_64__) && defined(__GLIBC__) && !defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 12
    #define LUXLIB_PHILOX_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
    #else
    #define LUXLIB_PHILOX_CLONES
    #endif

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

    /* The 4 words of blocks first .. first + nblocks - 1, block b at words[4 (b - first)];
       block b has the counter (b & 0xFFFFFFFF, b >> 32, 0, 0). The run must not cross a
       multiple of 2**32 (the high counter word is the same for the whole run). */
    LUXLIB_PHILOX_CLONES
    static void luxlib_philox_words(uint64_t first, Py_ssize_t nblocks, uint32_t k0, uint32_t k1,
                                    uint32_t *words)
    {
        uint32_t lo = (uint32_t)first, hi = (uint32_t)(first >> 32);
        for (Py_ssize_t j = 0; j < nblocks; j++) {
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
    void philox_words "luxlib_philox_words"(uint64_t first, Py_ssize_t nblocks, uint32_t k0,
                                            uint32_t k1, uint32_t* words) noexcept nogil
