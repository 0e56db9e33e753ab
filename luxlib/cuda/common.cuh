// Shared helpers of the luxlib CUDA kernels: integer types, the element types
// (float, double, __half computed in float), correctly rounded arithmetic that the
// compiler may not contract into FMAs, block/warp reductions, and division by a
// divisor fixed for a launch (lx_divisor).
//
// The same text compiles with NVRTC (real GPU) and with g++ under
// tests/cuda/emu/cuda_emu.h (CPU emulation); the emulation header defines
// LUXLIB_CUDA_EMU and everything CUDA-specific used here (but __umulhi/__umul64hi:
// lx_mulhi has its own CPU version).
#ifndef LUXLIB_CUDA_COMMON_CUH
#define LUXLIB_CUDA_COMMON_CUH

#ifndef LUXLIB_CUDA_EMU
#include <cuda_fp16.h>
#endif

typedef unsigned int lx_u32;
typedef unsigned long long lx_u64;
typedef long long lx_i64;

#define LX_WARP 32
// items (16-byte vectors, or elements) each thread of an elementwise loop moves per step, all
// loaded before any is stored, so a thread has this many loads in flight; the host sizes the
// grid for it (luxlib/cuda/_modules.py: UNROLL)
#define LX_UNROLL 4
// the loaded inputs of an elementwise kernel with two input arrays
template <typename P> struct lx_two { P a, b; };

// accumulation / compute type of an element type
template <typename T> struct lx_acc { typedef T type; };
template <> struct lx_acc<__half> { typedef float type; };

__device__ __forceinline__ float lx_load(const float* p) { return *p; }
__device__ __forceinline__ double lx_load(const double* p) { return *p; }
__device__ __forceinline__ float lx_load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void lx_store(float* p, float v) { *p = v; }
__device__ __forceinline__ void lx_store(double* p, double v) { *p = v; }
__device__ __forceinline__ void lx_store(__half* p, float v) { *p = __float2half_rn(v); }

// a double as an element of type T, rounded once to nearest (a half through float could
// round twice: 1 + 2^-11 + 2^-30 becomes the tie 1 + 2^-11 in float, then 1 by ties-to-even)
template <typename T> __device__ __forceinline__ T lx_from_double(double v) { return (T)v; }
template <> __device__ __forceinline__ __half lx_from_double<__half>(double v) { return __double2half(v); }

// a compute-type value as an element of type T (rounded to nearest)
template <typename T> __device__ __forceinline__ T lx_to_elem(typename lx_acc<T>::type v) { return v; }
template <> __device__ __forceinline__ __half lx_to_elem<__half>(float v) { return __float2half_rn(v); }

// round a compute-type value to T (identity except for __half). float has more than
// 2 * 11 + 2 bits, so an operation on halves done in float and rounded once to half
// gives the half-precision result (double rounding is innocuous).
template <typename T> __device__ __forceinline__ typename lx_acc<T>::type lx_round(typename lx_acc<T>::type v) { return v; }
template <> __device__ __forceinline__ float lx_round<__half>(float v) { return __half2float(__float2half_rn(v)); }

// multiply / add, each rounded (never fused into an FMA): used where the result must
// match the generic path bit for bit
__device__ __forceinline__ float lx_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double lx_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float lx_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double lx_add(double a, double b) { return __dadd_rn(a, b); }

// sum over a warp; every lane of the warp must call it (full mask)
template <typename A> __device__ __forceinline__ A lx_warp_sum(A v)
{
    for (int off = LX_WARP / 2; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
    return v;
}

// sum over the block (blockDim.x a multiple of 32, at most 1024); every thread calls it;
// the result is valid in thread 0. `scratch` is __shared__ storage of 32 elements.
template <typename A> __device__ __forceinline__ A lx_block_sum(A v, A* scratch)
{
    const int lane = threadIdx.x % LX_WARP, warp = threadIdx.x / LX_WARP;
    v = lx_warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int nwarps = blockDim.x / LX_WARP;
    if (warp == 0) {
        v = lane < nwarps ? scratch[lane] : (A)0;
        v = lx_warp_sum(v);
    }
    __syncthreads();  // scratch may be reused by the caller
    return v;
}

// out[k] = the sum over the block of every thread's v[k] (k < N), visible to every thread on
// return, for two barriers: the same sums as lx_block_sum k by k (which takes two barriers for
// each); every thread calls it. `scratch` is __shared__ storage of N x 32 elements, `out` of
// N; out is overwritten by the next call with the same out: read it first.
template <typename A, int N>
__device__ __forceinline__ void lx_block_sums(const A (&v)[N], A (*scratch)[LX_WARP], A* out)
{
    const int lane = threadIdx.x % LX_WARP, warp = threadIdx.x / LX_WARP, nwarps = blockDim.x / LX_WARP;
#pragma unroll
    for (int k = 0; k < N; k++) {
        const A s = lx_warp_sum(v[k]);
        if (lane == 0) scratch[k][warp] = s;
    }
    __syncthreads();
    for (int k = warp; k < N; k += nwarps) {  // the warps share the N second-level sums
        const A s = lx_warp_sum(lane < nwarps ? scratch[k][lane] : (A)0);
        if (lane == 0) out[k] = s;
    }
    __syncthreads();
}

// high half of a full-width unsigned product (mul.hi.u32 / mul.hi.u64)
#ifdef LUXLIB_CUDA_EMU
inline lx_u32 lx_mulhi(lx_u32 a, lx_u32 b) { return (lx_u32)(((lx_u64)a * b) >> 32); }
inline lx_u64 lx_mulhi(lx_u64 a, lx_u64 b) { return (lx_u64)(((unsigned __int128)a * b) >> 64); }
#else
__device__ __forceinline__ lx_u32 lx_mulhi(lx_u32 a, lx_u32 b) { return __umulhi(a, b); }
__device__ __forceinline__ lx_u64 lx_mulhi(lx_u64 a, lx_u64 b) { return __umul64hi(a, b); }
#endif

// n / d and n % d for a divisor d fixed for a launch, by a multiply and a shift instead
// of a division (a GPU has no integer division: a 64-bit `/` is a routine of ~70
// instructions). I is lx_u32 or lx_u64, of B bits; d = 1 ... 2^(B-1), and the host
// computes (luxlib.cuda._normalization.divisor) shift = ceil(log2 d) and
// mul = ceil(2^(B-1+shift) / d) (< 2^B). Then n / d = mulhi(2n, mul) >> shift exactly for
// 0 <= n < 2^(B-1): mul = (2^(B-1+shift) + e) / d with 0 <= e < d <= 2^shift, so the
// error n e / (d 2^(B-1+shift)) stays below 1/d (Granlund & Montgomery 1994, as
// CUTLASS's FastDivmod; doubling n instead of shifting by shift - 1 keeps d = 1 exact).
template <typename I> struct lx_divisor {
    I d, mul;
    int shift;
    __device__ __forceinline__ lx_divisor(lx_i64 d_, lx_u64 mul_, int shift_) : d((I)d_), mul((I)mul_), shift(shift_) {}
    __device__ __forceinline__ I div(I n) const { return lx_mulhi((I)(n + n), mul) >> shift; }
    __device__ __forceinline__ I mod(I n) const { return n - div(n) * d; }
};
// a divisor's parameters as a member of a struct argument (_modules.DIVISOR), and the
// lx_divisor<I> made of them. A struct of a launch's scalars is one kernel argument: CuPy's
// host time per launch grows by ~0.25 us with each argument.
struct lx_div_args {
    lx_i64 d;
    lx_u64 mul;
    int shift;
};
#define LX_DIV_OF(I, a) lx_divisor<I>((a).d, (a).mul, (a).shift)

// Calls f(k, load(i)) for the elements k in [k0, k1) of a unit (a channel, a group of
// normalization) assigned to this thread (k = k0 + threadIdx.x, then steps of blockDim.x), in
// order of k, with i the element's index in the array: element k is j = k % runlen into run
// r = k / runlen, at base + r * rstride + j. A step is sq runs and sr elements, so i and j
// advance by constants, plus one run where j wraps (no division in the loop). LX_UNROLL
// elements are loaded before f sees the first of them: a thread has that many loads in
// flight, not one (f's sums come one load after another otherwise).
template <typename Load, typename F>
__device__ __forceinline__ void lx_for_chunk(lx_i64 base, lx_i64 k0, lx_i64 k1, const lx_divisor<lx_u64>& runlen,
                                             lx_i64 rstride, Load load, F f)
{
    typedef decltype(load(lx_i64(0))) In;
    lx_i64 k = k0 + threadIdx.x;
    if (k >= k1) return;
    const lx_i64 step = blockDim.x, len = (lx_i64)runlen.d;
    const lx_i64 sq = (lx_i64)runlen.div(step), sr = step - sq * len;
    const lx_i64 r = (lx_i64)runlen.div(k);
    lx_i64 j = k - r * len, i = base + r * rstride + j;
    const lx_i64 di = sq * rstride + sr, dwrap = rstride - len;
    auto advance = [&]() {
        i += di;
        j += sr;
        if (j >= len) {  /* j < 2 len: sr < len */
            j -= len;
            i += dwrap;
        }
    };
    for (; k + (LX_UNROLL - 1) * step < k1; k += LX_UNROLL * step) {
        In in[LX_UNROLL];
#pragma unroll
        for (int u = 0; u < LX_UNROLL; u++) {
            in[u] = load(i);
            advance();
        }
#pragma unroll
        for (int u = 0; u < LX_UNROLL; u++) f(k + u * step, in[u]);
    }
    for (; k < k1; k += step) {
        f(k, load(i));
        advance();
    }
}

#endif
