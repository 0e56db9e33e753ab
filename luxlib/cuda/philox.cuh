// Philox4x32-10 (Random123), line for line the C of luxlib/_kernels/_philox.pxd;
// the mask contract (key, counter layout, u, keep test) is in doc/dropout.md.
#ifndef LUXLIB_CUDA_PHILOX_CUH
#define LUXLIB_CUDA_PHILOX_CUH
#include "common.cuh"

/* Replace the counter c[0..3] by its Philox4x32-10 output block under key (k0, k1). */
__device__ __forceinline__ void lx_philox4x32_10(lx_u32* c, lx_u32 k0, lx_u32 k1)
{
    lx_u32 c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3];
#pragma unroll
    for (int r = 0; r < 10; r++) {
        lx_u64 p0 = (lx_u64)0xD2511F53u * c0;  /* round multipliers M0, M1 */
        lx_u64 p1 = (lx_u64)0xCD9E8D57u * c2;
        lx_u32 t0 = (lx_u32)(p1 >> 32) ^ c1 ^ k0;
        lx_u32 t2 = (lx_u32)(p0 >> 32) ^ c3 ^ k1;
        c1 = (lx_u32)p1;
        c3 = (lx_u32)p0;
        c0 = t0;
        c2 = t2;
        /* bumping after every round equals Random123's bump before all but the first */
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    c[0] = c0; c[1] = c1; c[2] = c2; c[3] = c3;
}

/* The 4 words of block b: counter (b & 0xFFFFFFFF, b >> 32, 0, 0). */
__device__ __forceinline__ void lx_philox_block(lx_u64 b, lx_u32 k0, lx_u32 k1, lx_u32* w)
{
    w[0] = (lx_u32)b;
    w[1] = (lx_u32)(b >> 32);
    w[2] = 0;
    w[3] = 0;
    lx_philox4x32_10(w, k0, k1);
}

/* keep = u > p, as the integer test (word >> 8) > thr with thr = floor(p * 2**24) */
__device__ __forceinline__ bool lx_keep(lx_u32 word, lx_u32 thr) { return (word >> 8) > thr; }

#endif
