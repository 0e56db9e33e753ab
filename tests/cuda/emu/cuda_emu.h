// cuda_emu.h: compile CUDA kernel sources with g++ and run them on the CPU.
//
// Every CUDA thread of a block runs as a fiber (ucontext) on one OS thread; blocks run
// one after the other. A fiber runs until it reaches a barrier (__syncthreads, or a
// warp-level operation: __syncwarp and the shuffles), then the scheduler runs the
// next one; a barrier is released when every thread it waits for has arrived, so
// __shared__ memory (one static instance, shared by the fibers of the block), barriers,
// shuffles and atomics behave as on a GPU. The order in which runnable fibers run can be
// in order or shuffled (seeded), which exposes missing barriers. Divergent barriers,
// shuffles naming exited lanes and deadlocks are reported as errors, not hangs. Built with
// -fsanitize=thread it is a race check (below). See doc/cuda.md for what this cannot show.
#ifndef LUXLIB_CUDA_EMU_H
#define LUXLIB_CUDA_EMU_H
#define LUXLIB_CUDA_EMU 1

#include <ucontext.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <cstddef>
#include <functional>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define LX_EMU_ASAN 1
#endif

// Under ThreadSanitizer (the race check) every CUDA thread is a TSan fiber and the switches
// between fibers establish no order; the order a GPU guarantees is declared instead: a
// launch's start after what came before it, __syncthreads among the threads of a block,
// __syncwarp among its lanes. TSan then reports two threads that access the same memory, one
// of them writing, with no barrier between them, whatever the schedule. Threads of different
// blocks are unordered too: the blocks run in turn on a few sets of fibers and stacks
// (fiber_sets; each run of as many blocks takes every set once, rotated by a hash), and a
// block comes after only the blocks that ran on its set before it (its fibers ran them); the
// __shared__ section, which every block reuses, is mapped anew before each block, which
// clears TSan's record of it (hence its pages of its own: shared_section.ld).
// The emulator's own accesses to its state, which its scheduler and fibers hand to each other
// through those switches, are not checked (LX_EMU_UNCHECKED: for the rest of the enclosing
// scope).
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#include <sys/mman.h>
#define LX_EMU_TSAN 1
extern "C" void __tsan_ignore_thread_begin(void);
extern "C" void __tsan_ignore_thread_end(void);
struct LxEmuUnchecked {
    LxEmuUnchecked() { __tsan_ignore_thread_begin(); }
    ~LxEmuUnchecked() { __tsan_ignore_thread_end(); }
};
#define LX_EMU_UNCHECKED LxEmuUnchecked lx_emu_unchecked_
#else
#define LX_EMU_UNCHECKED
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
// __shared__ variables: static (one instance for the fibers of a block), all in one section,
// on pages of its own (shared_section.ld), that is filled with 0xFF bytes (NaN floats, -1
// integers) before every block, so reading shared memory before writing it shows (a GPU
// leaves it undefined). GCC ignores the section attribute on a template's statics (every
// kernel is a template) and puts each in a section of its own, `.bss.<its mangled name>`
// (emu_module builds with -fdata-sections), which the linker script gathers too; the emulator
// has no function-local statics. Under AddressSanitizer each __shared__ array has a redzone
// after it (the kernels have internal linkage: emu_module._generated), so an overrun through a
// pointer into it is reported; the fill skips the redzones.
#define __shared__ static __attribute__((section("lx_emu_shared")))
extern "C" char __start_lx_emu_shared[] __attribute__((weak));
extern "C" char __stop_lx_emu_shared[] __attribute__((weak));
#define __launch_bounds__(...)

struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

static uint3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

struct __half { _Float16 v; };
inline float __half2float(__half h) { return (float)h.v; }
inline __half __float2half_rn(float f) { __half h; h.v = (_Float16)f; return h; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline __half __double2half(double d) { __half h; h.v = (_Float16)d; return h; }  // rounded once

// compiled with -ffp-contract=off: every operation is rounded on its own
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }

namespace emu {

enum State { RUN, BLOCK_WAIT, WARP_WAIT, DONE };

struct Fiber {
    ucontext_t ctx;
    char* stack;
    State state;
    unsigned mask;  // lanes of a warp-level barrier
    uint3 idx;
    void* fake_stack;
    void* tsan;  // its TSan fiber
};

// the threads of the sets of fibers under the race check (at least two sets). Each is a TSan
// fiber, kept for later launches, and TSan allows a process 8128 threads: every kernel
// family's library keeps its own, up to 1024 for blocks of up to 512 threads (the largest).
#ifndef LX_EMU_FIBER_THREADS
#define LX_EMU_FIBER_THREADS 1024
#endif

#ifndef LX_EMU_STACK
#ifdef LX_EMU_ASAN
#define LX_EMU_STACK (256 * 1024)
#else
#define LX_EMU_STACK (64 * 1024)
#endif
#endif

// TSan synchronization objects (their addresses) of a block: __syncthreads, and each warp's
// __syncwarp. A barrier's objects alternate between two generations (counted as the scheduler
// releases it): a thread that resumes from a barrier must not acquire what a thread released
// at the next one, which it reaches first when it runs first.
struct BlockSync {
    char block[2], warp[32][2];
};

struct Runtime {
    std::vector<Fiber> fibers;  // the running block's threads
    // stacks and TSan fibers in pairs, kept across launches: the threads of a block that runs
    // on the k-th set run on slots [k n, (k + 1) n)
    std::vector<char*> stacks;
    std::vector<void*> tsan_fibers;
    void* tsan_sched = nullptr;  // the scheduler's (the launching thread's)
    // a launch's start, its threads' exits (acquired by the scheduler at the launch's end)
    char sync_start, sync_exit;
    std::vector<BlockSync> syncs;  // one per set of fibers
    BlockSync* sync = nullptr;     // the running block's
    unsigned block_gen = 0, warp_gen[32] = {};
    ucontext_t sched;
    int current = -1;
    int nthreads = 0;
    std::string error;
    std::function<void()> body;
    // warp exchange slots: [warp][lane]
    std::vector<unsigned long long> slots;
    unsigned long long launches = 0;  // launches so far (each draws its blocks' sets anew)
    const void* sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
    void* sched_fake = nullptr;
};

// never destroyed: its destructor at exit would race, for ThreadSanitizer, with the fibers
static Runtime& rt = *new Runtime();

inline void fail(const std::string& msg)
{
    LX_EMU_UNCHECKED;
    if (rt.error.empty()) rt.error = msg;
}

inline void enter_fiber_side()
{
#ifdef LX_EMU_ASAN
    Fiber& f = rt.fibers[rt.current];
    __sanitizer_finish_switch_fiber(f.fake_stack, &rt.sched_stack_bottom, &rt.sched_stack_size);
#endif
}

// from a fiber back to the scheduler
inline void yield_to_scheduler(bool dying = false)
{
    Fiber& f = rt.fibers[rt.current];
#ifdef LX_EMU_TSAN
    __tsan_switch_to_fiber(rt.tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef LX_EMU_ASAN
    __sanitizer_start_switch_fiber(dying ? nullptr : &f.fake_stack, rt.sched_stack_bottom, rt.sched_stack_size);
#else
    (void)dying;
#endif
    swapcontext(&f.ctx, &rt.sched);
    enter_fiber_side();
}

// a TSan release (or acquire) of the synchronization object at `sync`; nothing without TSan
inline void release(void* sync)
{
#ifdef LX_EMU_TSAN
    __tsan_release(sync);
#else
    (void)sync;
#endif
}

inline void acquire(void* sync)
{
#ifdef LX_EMU_TSAN
    __tsan_acquire(sync);
#else
    (void)sync;
#endif
}

inline void fiber_entry()
{
    enter_fiber_side();
    acquire(&rt.sync_start);
    rt.body();
    {
        LX_EMU_UNCHECKED;  // ended before the switch: the TSan fiber runs other blocks later
        release(&rt.sync_exit);
        rt.fibers[rt.current].state = DONE;
    }
    yield_to_scheduler(true);
}

inline int linear_tid() { return (int)(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)); }

inline void syncthreads()
{
    LX_EMU_UNCHECKED;
    char* sync = &rt.sync->block[rt.block_gen % 2];
    rt.fibers[rt.current].state = BLOCK_WAIT;
    release(sync);
    yield_to_scheduler();
    acquire(sync);
}

// a warp-level barrier of the lanes in `mask`; `ordered`: it orders their memory accesses
// (__syncwarp does, a shuffle does not). The race check's generations assume that the lanes
// of a warp meet at the same barriers (full masks, as every kernel has).
inline void syncwarp(unsigned mask, bool ordered)
{
    LX_EMU_UNCHECKED;
    Fiber& f = rt.fibers[rt.current];
    int lane = linear_tid() % 32, warp = linear_tid() / 32;
    char* sync = &rt.sync->warp[warp][rt.warp_gen[warp] % 2];
    if (!(mask >> lane & 1u)) fail("__syncwarp/shuffle called by a lane outside its mask");
    f.state = WARP_WAIT;
    f.mask = mask;
    if (ordered) release(sync);
    yield_to_scheduler();
    if (ordered) acquire(sync);
}

// run one block: every fiber to completion
inline void run_block(bool shuffle, std::mt19937& gen)
{
    const int n = rt.nthreads;
    release(&rt.sync_start);  // the block starts after what came before the launch
    for (int t = 0; t < n; t++) {
        Fiber& f = rt.fibers[t];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = LX_EMU_STACK;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry, 0);
        f.state = RUN;
        f.mask = 0;
        f.fake_stack = nullptr;
        unsigned tid = (unsigned)t;
        f.idx.x = tid % blockDim.x;
        f.idx.y = (tid / blockDim.x) % blockDim.y;
        f.idx.z = tid / (blockDim.x * blockDim.y);
    }
    std::vector<int> order;
    for (;;) {
        order.clear();
        for (int t = 0; t < n; t++)
            if (rt.fibers[t].state == RUN) order.push_back(t);
        if (shuffle) std::shuffle(order.begin(), order.end(), gen);
        for (int t : order) {
            rt.current = t;
            threadIdx = rt.fibers[t].idx;
#ifdef LX_EMU_TSAN
            __tsan_switch_to_fiber(rt.fibers[t].tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef LX_EMU_ASAN
            __sanitizer_start_switch_fiber(&rt.sched_fake, rt.fibers[t].stack, LX_EMU_STACK);
#endif
            swapcontext(&rt.sched, &rt.fibers[t].ctx);
#ifdef LX_EMU_ASAN
            __sanitizer_finish_switch_fiber(rt.sched_fake, nullptr, nullptr);
#endif
            if (!rt.error.empty()) return;
        }
        if (!order.empty()) continue;
        int done = 0, bwait = 0;
        for (int t = 0; t < n; t++) {
            done += rt.fibers[t].state == DONE;
            bwait += rt.fibers[t].state == BLOCK_WAIT;
        }
        if (done == n) return;
        // release warp barriers whose lanes have all arrived with the same mask
        bool released = false;
        for (int w = 0; w * 32 < n; w++) {
            unsigned mask = 0;
            bool any = false;
            for (int l = 0; l < 32 && w * 32 + l < n; l++) {
                Fiber& f = rt.fibers[w * 32 + l];
                if (f.state == WARP_WAIT) { mask = f.mask; any = true; break; }
            }
            if (!any) continue;
            bool ready = true;
            for (int l = 0; l < 32; l++) {
                if (!(mask >> l & 1u)) continue;
                int t = w * 32 + l;
                if (t >= n) { fail("warp-level operation: mask names a lane that does not exist"); return; }
                Fiber& f = rt.fibers[t];
                if (f.state == DONE) { fail("warp-level operation: mask names an exited lane"); return; }
                if (f.state != WARP_WAIT) { ready = false; break; }
                if (f.mask != mask) { fail("warp-level operation: lanes disagree on the mask"); return; }
            }
            if (ready) {
                for (int l = 0; l < 32; l++)
                    if (mask >> l & 1u) rt.fibers[w * 32 + l].state = RUN;
                rt.warp_gen[w]++;
                released = true;
            }
        }
        if (released) continue;
        if (bwait == n) {
            for (int t = 0; t < n; t++) rt.fibers[t].state = RUN;
            rt.block_gen++;
            continue;
        }
        char msg[200];
        snprintf(msg, sizeof msg,
                 "barrier divergence / deadlock in block (%u,%u,%u): %d threads at __syncthreads, %d exited, %d at warp barriers",
                 blockIdx.x, blockIdx.y, blockIdx.z, bwait, done, n - bwait - done);
        fail(msg);
        return;
    }
}

// ---- kernel signatures and launches -------------------------------------------

// a struct passed by value (a kernel's parameter block): "s" and its size in bytes
template <typename X> struct code {
    static std::string s() { return std::is_class<X>::value ? "s" + std::to_string(sizeof(X)) : "?"; }
};
template <> struct code<float> { static std::string s() { return "f4"; } };
template <> struct code<double> { static std::string s() { return "f8"; } };
template <> struct code<__half> { static std::string s() { return "f2"; } };
template <> struct code<int> { static std::string s() { return "i4"; } };
template <> struct code<unsigned> { static std::string s() { return "u4"; } };
template <> struct code<long long> { static std::string s() { return "i8"; } };
template <> struct code<unsigned long long> { static std::string s() { return "u8"; } };
template <> struct code<unsigned char> { static std::string s() { return "u1"; } };
template <> struct code<signed char> { static std::string s() { return "i1"; } };
template <typename X> struct code<X*> { static std::string s() { return "p" + code<typename std::remove_cv<X>::type>::s(); } };

template <typename... A> std::string signature(void (*)(A...))
{
    std::string out;
    ((out += code<typename std::decay<A>::type>::s() + ","), ...);
    return out;
}

template <typename... A, size_t... I>
void call(void (*k)(A...), void** args, std::index_sequence<I...>)
{
    k(*static_cast<typename std::decay<A>::type*>(args[I])...);
}

// sets of fibers for blocks of `nthreads` threads: under the race check, as many as
// LX_EMU_FIBER_THREADS threads make (at least 2); otherwise one
inline int fiber_sets(int nthreads)
{
#ifdef LX_EMU_TSAN
    return std::max(2, LX_EMU_FIBER_THREADS / nthreads);
#else
    (void)nthreads;
    return 1;
#endif
}

// SplitMix64's finalizer: every bit of `v` reaches every bit of the result
inline unsigned long long mix64(unsigned long long v)
{
    v = (v ^ (v >> 30)) * 0xBF58476D1CE4E5B9ull;
    v = (v ^ (v >> 27)) * 0x94D049BB133111EBull;
    return v ^ (v >> 31);
}

// stacks, each with its TSan fiber, up to `count`
inline void add_slots(size_t count)
{
    while (rt.stacks.size() < count) {
        rt.stacks.push_back((char*)malloc(LX_EMU_STACK));
#ifdef LX_EMU_TSAN
        rt.tsan_fibers.push_back(__tsan_create_fiber(0));
#else
        rt.tsan_fibers.push_back(nullptr);
#endif
    }
}

// after a failed launch, new stacks and TSan fibers: its fibers may have been left in an
// unchecked scope, and a later launch's fibers must not race with their accesses to the stacks
inline void renew_slots()
{
#ifdef LX_EMU_TSAN
    for (size_t i = 0; i < rt.stacks.size(); i++) {
        __tsan_destroy_fiber(rt.tsan_fibers[i]);
        free(rt.stacks[i]);  // TSan forgets the accesses to memory that is freed
        rt.stacks[i] = (char*)malloc(LX_EMU_STACK);
        rt.tsan_fibers[i] = __tsan_create_fiber(0);
    }
#endif
}

// __shared__ memory as a block finds it: 0xFF bytes. Under the race check its pages are also
// mapped anew, which clears TSan's record of the blocks before (on a GPU each has its own).
inline void reset_shared()
{
    if (__start_lx_emu_shared == nullptr) return;
    const size_t size = (size_t)(__stop_lx_emu_shared - __start_lx_emu_shared);
#ifdef LX_EMU_TSAN
    if (((uintptr_t)__start_lx_emu_shared | size) % 4096) {
        fail("the __shared__ section is not whole pages (link with shared_section.ld)");
        return;
    }
    if (size && mmap(__start_lx_emu_shared, size, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0) == MAP_FAILED) {
        fail("remapping the __shared__ section failed");
        return;
    }
#endif
#ifdef LX_EMU_ASAN
    // the arrays between their redzones (whose poison a memset would report)
    char* p = __start_lx_emu_shared;
    char* const end = p + size;
    while (p < end) {
        char* bad = (char*)__asan_region_is_poisoned(p, (size_t)(end - p));
        memset(p, 0xFF, (size_t)((bad ? bad : end) - p));
        for (p = bad ? bad : end; p < end && __asan_address_is_poisoned(p); ++p) {
        }
    }
#else
    memset(__start_lx_emu_shared, 0xFF, size);
#endif
}

// schedule: 0 in order, 1 shuffled (threads and blocks) with `seed`
template <typename... A>
const char* launch(void (*k)(A...), const unsigned* g, const unsigned* b, void** args, int schedule, unsigned seed)
{
    LX_EMU_UNCHECKED;
    rt.error.clear();
    gridDim = dim3(g[0], g[1], g[2]);
    blockDim = dim3(b[0], b[1], b[2]);
    const int n = (int)(b[0] * b[1] * b[2]);
    if (n < 1 || n > 1024 || b[0] > 1024 || b[1] > 1024 || b[2] > 64) {
        rt.error = "invalid block dimensions";
        return rt.error.c_str();
    }
    if (g[0] < 1 || g[1] < 1 || g[2] < 1 || g[1] > 65535 || g[2] > 65535) {
        rt.error = "invalid grid dimensions";
        return rt.error.c_str();
    }
    std::mt19937 gen(seed);
    std::vector<uint3> blocks;
    for (unsigned z = 0; z < g[2]; z++)
        for (unsigned y = 0; y < g[1]; y++)
            for (unsigned x = 0; x < g[0]; x++) blocks.push_back(uint3{x, y, z});
    if (schedule == 1) std::shuffle(blocks.begin(), blocks.end(), gen);
    const int sets = (int)std::min(blocks.size(), (size_t)fiber_sets(n));
    add_slots((size_t)sets * n);
#ifdef LX_EMU_TSAN
    rt.tsan_sched = __tsan_get_current_fiber();
#endif
    rt.nthreads = n;
    rt.fibers.resize(n);
    rt.syncs.resize(sets);
    rt.slots.assign(((n + 31) / 32) * 32, 0);
    rt.body = [k, args]() { call(k, args, std::index_sequence_for<A...>{}); };
    const unsigned long long launch_key = rt.launches++ * 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < blocks.size(); i++) {
        // block i on a set: it comes after the blocks that ran on that set before it (whose
        // threads ran on its fibers and released its barriers' objects), not after the others.
        // Each run of `sets` blocks takes every set once, rotated by an offset drawn from a
        // hash of the run and the launch's number: two blocks of one run are never on one
        // set, two of different runs are with chance 1 / sets. (Set i % sets would order
        // every two blocks of a column of a grid whose width is a multiple of `sets`.)
        const unsigned long long run = i / sets, offset = mix64(run + launch_key) % sets;
        const int set = (int)((i % sets + offset) % sets);
        for (int t = 0; t < n; t++) {
            rt.fibers[t].stack = rt.stacks[set * n + t];
            rt.fibers[t].tsan = rt.tsan_fibers[set * n + t];
        }
        rt.sync = &rt.syncs[set];
        blockIdx = blocks[i];
        reset_shared();
        if (rt.error.empty()) run_block(schedule == 1, gen);
        if (!rt.error.empty()) {
            renew_slots();
            return rt.error.c_str();
        }
    }
    acquire(&rt.sync_exit);  // what follows the launch comes after its threads
    return nullptr;
}

}  // namespace emu

// A GPU faults on an access of `bytes` (a vector: elementwise.cuh's packs) at an address that
// is not a multiple of it; x86 does not, so the emulation checks and reports it.
inline void lx_emu_check_aligned(const void* p, size_t bytes)
{
    if ((uintptr_t)p % bytes) emu::fail("misaligned address: a " + std::to_string(bytes) + "-byte access");
}

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask, true); }

// shuffles: write the value to the lane's slot, wait for the warp, read, wait again
template <typename V> inline V lx_emu_shfl(unsigned mask, V v, int src_of_lane_delta, int mode, int width)
{
    static_assert(sizeof(V) <= 8, "shuffle of a type larger than 8 bytes");
    LX_EMU_UNCHECKED;  // the slots: a shuffle orders no memory accesses
    const int lane = emu::linear_tid() % 32, warp = emu::linear_tid() / 32;
    unsigned long long* slot = &emu::rt.slots[warp * 32];
    memcpy(&slot[lane], &v, sizeof(V));
    emu::syncwarp(mask, false);
    int base = lane - lane % width, src;
    if (mode == 0) src = lane + src_of_lane_delta < base + width ? lane + src_of_lane_delta : lane;  // down
    else if (mode == 1) src = lane - src_of_lane_delta >= base ? lane - src_of_lane_delta : lane;  // up
    else if (mode == 2) src = (lane ^ src_of_lane_delta);                                          // xor
    else src = base + (src_of_lane_delta % width);                                                 // idx
    if (src >= 32 || !(mask >> src & 1u)) emu::fail("shuffle reads a lane outside the mask");
    V out;
    memcpy(&out, &slot[src < 32 ? src : lane], sizeof(V));
    emu::syncwarp(mask, false);
    return out;
}
template <typename V> inline V __shfl_down_sync(unsigned m, V v, unsigned d, int w = 32) { return lx_emu_shfl(m, v, (int)d, 0, w); }
template <typename V> inline V __shfl_up_sync(unsigned m, V v, unsigned d, int w = 32) { return lx_emu_shfl(m, v, (int)d, 1, w); }
template <typename V> inline V __shfl_xor_sync(unsigned m, V v, int d, int w = 32) { return lx_emu_shfl(m, v, d, 2, w); }
template <typename V> inline V __shfl_sync(unsigned m, V v, int s, int w = 32) { return lx_emu_shfl(m, v, s, 3, w); }

// atomics: fibers never interleave inside one, so plain read-modify-write is atomic (the race
// check does not see them)
template <typename V> inline V atomicAdd(V* p, V v) { LX_EMU_UNCHECKED; V old = *p; *p = old + v; return old; }
template <typename V> inline V atomicMax(V* p, V v) { LX_EMU_UNCHECKED; V old = *p; *p = old < v ? v : old; return old; }
template <typename V> inline V atomicMin(V* p, V v) { LX_EMU_UNCHECKED; V old = *p; *p = v < old ? v : old; return old; }
template <typename V> inline V atomicExch(V* p, V v) { LX_EMU_UNCHECKED; V old = *p; *p = v; return old; }
template <typename V> inline V atomicCAS(V* p, V cmp, V v) { LX_EMU_UNCHECKED; V old = *p; if (old == cmp) *p = v; return old; }
inline void __threadfence() {}

#endif
