"""Tests of the CPU emulation itself (tests/cuda/emu): barriers, shared memory, warp
shuffles and atomics behave as on a GPU; a missing barrier (by the shuffled schedule, and as
a race under ThreadSanitizer whatever the schedule), a block reading another's output or two
blocks writing one element (as races), a divergent barrier, an out-of-bounds index (of an
argument under AddressSanitizer, of a ``__shared__`` array under UBSan's bounds check, past one
through a pointer under AddressSanitizer) and a mistyped argument are caught; allocations and
each block's ``__shared__`` memory read 0xFF bytes.
``test_kernels_under_sanitizer`` runs the kernel comparisons once more under each sanitizer."""

import os
import subprocess
import sys
import textwrap
import typing

import emu_module
import numpy as np
import pytest
import sanitized

HERE = os.path.dirname(os.path.abspath(__file__))

KERNELS = r'''
#include "common.cuh"
#include "elementwise.cuh"
template <typename T> __global__ void block_sum(const T* x, T* out, int n)
{
    __shared__ T scratch[LX_WARP];
    T v = (int)threadIdx.x < n ? x[threadIdx.x] : (T)0;
    v = lx_block_sum(v, scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
}
/* out[i] = x[clamp(i + shift)] through shared memory; `barrier` 0 leaves out the barrier */
template <typename T> __global__ void rotate(const T* x, T* out, int barrier, int shift)
{
    __shared__ T s[1024];
    s[threadIdx.x] = x[threadIdx.x];
    if (barrier) __syncthreads();
    int j = (int)threadIdx.x + shift;
    j = j < 0 ? 0 : (j >= (int)blockDim.x ? (int)blockDim.x - 1 : j);
    out[threadIdx.x] = s[j];
}
template <typename T> __global__ void divergent(T* out)
{
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = (T)1;
}
template <typename T> __global__ void xor_max(const T* x, T* out)
{
    T v = x[threadIdx.x];
    for (int off = 16; off > 0; off >>= 1) { T o = __shfl_xor_sync(0xffffffffu, v, off); v = o > v ? o : v; }
    out[threadIdx.x] = v;
}
template <typename T> __global__ void count(T* out) { atomicAdd(out + (threadIdx.x % 3), (T)1); }
/* one element past the end when `past` is 1 */
template <typename T> __global__ void copy(const T* x, T* out, int n, int past)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n + past) out[i] = x[i];
}
/* out[i] = x[i + past] through a __shared__ array: one element past its end when `past` is 1 */
template <typename T> __global__ void shared_past(const T* x, T* out, int past)
{
    __shared__ T s[LX_WARP];
    s[threadIdx.x] = x[threadIdx.x];
    __syncthreads();
    out[threadIdx.x] = s[threadIdx.x + past];
}
/* block_sum with, when `few` is 1, a scratch array of 4 elements: too few for a block of more
   than 4 warps (lx_block_sum writes an element a warp, through a pointer) */
template <typename T> __global__ void block_sum_few(const T* x, T* out, int n, int few)
{
    __shared__ T scratch[LX_WARP];
    __shared__ T four[4];
    T v = (int)threadIdx.x < n ? x[threadIdx.x] : (T)0;
    v = lx_block_sum(v, few ? four : scratch);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
}
/* out[i] = the value lane i ^ 1 of the warp wrote to shared memory, after `sync`: 0 none,
   1 __syncwarp, 2 a shuffle (which orders no memory accesses) */
template <typename T> __global__ void swap_pairs(const T* x, T* out, int sync)
{
    __shared__ T s[LX_WARP];
    s[threadIdx.x] = x[threadIdx.x];
    if (sync == 1) __syncwarp();
    if (sync == 2) (void)__shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);
    out[threadIdx.x] = s[threadIdx.x ^ 1];
}
/* two tiles of blockDim.x elements through one __shared__ array: out[n t + i] = x[n t + i + 1]
   (the last element: its own); `barrier` 0 leaves out the barrier that keeps the second
   tile's writes after the first tile's reads */
template <typename T> __global__ void tiles(const T* x, T* out, int barrier)
{
    __shared__ T s[LX_WARP];
    const int n = blockDim.x, i = threadIdx.x;
    for (int t = 0; t < 2; t++) {
        s[i] = x[n * t + i];
        __syncthreads();
        out[n * t + i] = s[i + 1 < n ? i + 1 : i];
        if (barrier) __syncthreads();
    }
}
/* out[0] = 1 by thread 0 and, when `both` is 1, by thread 1 too */
template <typename T> __global__ void both_write(T* out, int both)
{
    if (threadIdx.x == 0 || (both && threadIdx.x == 1)) out[0] = (T)1;
}
/* out[0] = 1 by thread 0 of the first block and of the last */
template <typename T> __global__ void first_last_write(T* out)
{
    if (threadIdx.x == 0 && (blockIdx.x == 0 || blockIdx.x == gridDim.x - 1)) out[0] = (T)1;
}
/* out[blockIdx.x] = 1 by thread 0 of every block: the blocks of a column of a 2-D grid write
   one element */
template <typename T> __global__ void column_write(T* out)
{
    if (threadIdx.x == 0) out[blockIdx.x] = (T)1;
}
/* out[i] = x[i] (through __shared__ memory, which every block uses), plus, when `chained` is 1,
   the element before it that the block before wrote: a block that reads another block's
   output (right only when the blocks run in order) */
template <typename T> __global__ void chain(const T* x, T* out, int chained)
{
    __shared__ T s[32];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    s[blockDim.x - 1 - threadIdx.x] = x[i];
    __syncthreads();
    T v = s[blockDim.x - 1 - threadIdx.x];
    if (chained && blockIdx.x > 0 && threadIdx.x == 0) v += out[i - 1];
    out[i] = v;
}
/* out[i] = an element of a __shared__ array that no thread of the block wrote before; then
   the thread writes it */
template <typename T> __global__ void unwritten(T* out)
{
    __shared__ T s[32];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
    s[threadIdx.x] = (T)1;
}
/* x[4 i + k] to out[4 i + k], a 16-byte pack a thread */
template <typename T> __global__ void copy_packs(const T* x, T* out)
{
    const int i = 4 * (blockIdx.x * blockDim.x + threadIdx.x);
    lx_store_pack<T, 4>(out + i, lx_load_pack<T, 4>(x + i));
}
'''
EXPRS = ["block_sum<float>", "rotate<float>", "divergent<float>", "xor_max<float>", "count<int>", "copy<float>",
         "shared_past<float>", "swap_pairs<float>", "tiles<float>", "both_write<float>", "chain<float>",
         "unwritten<float>", "copy_packs<float>", "block_sum_few<float>", "first_last_write<float>",
         "column_write<float>"]


def module(schedule="inorder", seed=0, sanitize=None):
    return emu_module.EmuModule(source=KERNELS, exprs=EXPRS, schedule=schedule, seed=seed, sanitize=sanitize,
                                filename="harness.cu")


@pytest.mark.parametrize("schedule", ["inorder", "shuffle"])
@pytest.mark.parametrize("n", [1, 31, 32, 33, 255, 256])
def test_block_reduction(n, schedule):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = np.zeros(2, np.float32)
    module(schedule).get_function("block_sum<float>")((2,), (256,), (x if n == 256 else np.pad(x, (0, 256 - n)), out, np.int32(n)))
    np.testing.assert_allclose(out, x.sum(dtype=np.float64), rtol=1e-5)


@pytest.mark.parametrize("schedule", ["inorder", "shuffle"])
def test_barrier_makes_shared_memory_correct(schedule):
    for shift in (1, -1, 7):
        x = np.random.default_rng(abs(shift)).standard_normal(256).astype(np.float32)
        out = np.zeros(256, np.float32)
        module(schedule).get_function("rotate<float>")((1,), (256,), (x, out, np.int32(1), np.int32(shift)))
        np.testing.assert_array_equal(out, _shifted(x, shift))


def test_missing_barrier_is_caught():
    """Without the barrier, reading the next thread's value is wrong in order (the reader
    runs first); reading the previous one looks right in order and is caught only by the
    shuffled schedule: the reason for running both."""
    f = lambda sched, shift, seed: _rotate(module(sched), shift, seed)
    assert not f("inorder", 1, 1)
    assert f("inorder", -1, 2)  # hidden by the in-order schedule ...
    assert not f("shuffle", -1, 3)  # ... exposed by the shuffled one
    assert not f("shuffle", 1, 4)


def _shifted(x, shift):
    return x[np.clip(np.arange(x.size) + shift, 0, x.size - 1)]


def _rotate(mod, shift, seed):
    x = np.random.default_rng(seed).standard_normal(256).astype(np.float32)
    out = np.zeros(256, np.float32)
    mod.get_function("rotate<float>")((1,), (256,), (x, out, np.int32(0), np.int32(shift)))
    return np.array_equal(out, _shifted(x, shift))


def test_misaligned_pack_is_an_error():
    """A 16-byte access at an address that is not a multiple of 16 faults on a GPU; the
    emulation reports it (for the loads and for the stores)."""
    f = module().get_function("copy_packs<float>")
    buf, out = np.arange(17, dtype=np.float32), np.zeros(17, np.float32)
    assert buf.ctypes.data % 16 == 0 and out.ctypes.data % 16 == 0
    f((1,), (4,), (buf[:16], out[:16]))
    np.testing.assert_array_equal(out[:16], buf[:16])
    for x, y in ((buf[1:], out[:16]), (buf[:16], out[1:])):
        with pytest.raises(RuntimeError, match="misaligned address: a 16-byte access"):
            f((1,), (4,), (x, y))


@pytest.mark.parametrize("schedule", ["inorder", "shuffle"])
def test_unwritten_shared_memory_reads_nan(schedule):
    """Each block finds its ``__shared__`` memory filled with 0xFF bytes (NaN), whatever the
    block before it wrote there (a GPU leaves it undefined), in a kernel that is a template."""
    out = np.zeros(64, np.float32)
    module(schedule).get_function("unwritten<float>")((2,), (32,), (out,))
    assert np.isnan(out).all(), out


def test_divergent_barrier_is_an_error():
    with pytest.raises(RuntimeError, match="barrier divergence"):
        module().get_function("divergent<float>")((1,), (64,), (np.zeros(64, np.float32),))


@pytest.mark.parametrize("schedule", ["inorder", "shuffle"])
def test_warp_shuffle(schedule):
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    out = np.zeros(64, np.float32)
    module(schedule).get_function("xor_max<float>")((1,), (64,), (x, out))
    np.testing.assert_array_equal(out, np.repeat(x.reshape(2, 32).max(axis=1), 32))


def test_atomics():
    out = np.zeros(3, np.int32)
    module("shuffle").get_function("count<int>")((5,), (96,), (out,))
    np.testing.assert_array_equal(out, [160, 160, 160])


def test_arguments_are_type_checked():
    f = module().get_function("copy<float>")
    x, out = np.zeros(4, np.float32), np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="the kernel takes i4"):
        f((1,), (32,), (x, out, np.int64(4), np.int32(0)))
    with pytest.raises(TypeError, match="NumPy scalar"):
        f((1,), (32,), (x, out, 4, np.int32(0)))
    with pytest.raises(TypeError, match="dtype float64"):
        f((1,), (32,), (x.astype(np.float64), out, np.int32(4), np.int32(0)))
    with pytest.raises(TypeError, match="C-contiguous"):
        f((1,), (32,), (np.zeros(8, np.float32)[::2], out, np.int32(4), np.int32(0)))
    with pytest.raises(TypeError, match="3 arguments"):
        f((1,), (32,), (x, out, np.int32(4)))


class Hazard(typing.NamedTuple):
    """A fault that a sanitizer catches, and the same launch without it."""

    kernel: str
    #: the launch of ``f`` (the kernel) on ``x`` (0, 1, 2, ... 39) and ``out`` (zeros), with
    #: ``bad`` last: 0 for the correct launch, 1 for the fault
    call: str
    sanitizer: str
    #: in the sanitizer's report of the fault
    report: str
    #: ``out[:32]`` after the correct launch
    expected: tuple = tuple(range(32))


def _shared(kernel, signature):
    return f"Location is global '(anonymous namespace)::{kernel}({signature})::s'"


#: - one element past the end of an argument's buffer (AddressSanitizer) or of a ``__shared__``
#:   array (UBSan's bounds check), and elements past a ``__shared__`` array written through a
#:   pointer (AddressSanitizer);
#: - races between threads of a block (ThreadSanitizer): a missing ``__syncthreads`` (with the
#:   reader of a neighbour's element one thread below it, which the in-order schedule runs
#:   after the writer: the result is right); a missing ``__syncwarp``, and a shuffle in its
#:   place; a missing barrier between two iterations of a loop (which the in-order schedule
#:   hides, and which a thread that runs ahead into the next iteration must not hide from
#:   TSan: cuda_emu.h's generations of barriers); two threads writing one element of global
#:   memory;
#: - races between blocks (ThreadSanitizer): two blocks writing one element, and a block
#:   reading what the block before it wrote (right when the blocks run in order, as here; its
#:   correct launch has both blocks use one ``__shared__`` array, which must not be a race);
#:   the first and the last of 34 blocks of 32 threads writing one element (more blocks than
#:   the emulator has sets of fibers for: the last is of the second run of blocks); the blocks
#:   of each column of a 4 x 8 grid of 256-thread blocks writing one element (4 sets: a set per
#:   column, as ``i % sets`` gave, would order them).
HAZARDS = {
    "past global": Hazard("copy<float>", "f((2,), (32,), (x, out, np.int32(40), np.int32(bad)))", "address",
                          "heap-buffer-overflow"),
    "past shared": Hazard("shared_past<float>", "f((1,), (32,), (x, out, np.int32(bad)))", "address",
                          "index 32 out of bounds for type 'float [32]'"),
    "past shared, by pointer": Hazard("block_sum_few<float>",
                                      "f((1,), (256,), (x, out, np.int32(40), np.int32(bad)))", "address",
                                      "global-buffer-overflow", (780,) + (0,) * 31),
    "no syncthreads": Hazard("rotate<float>", "f((1,), (32,), (x, out, np.int32(1 - bad), np.int32(-1)))", "thread",
                             _shared("rotate<float>", "float const*, float*, int, int"),
                             tuple(np.maximum(np.arange(32) - 1, 0))),
    "no syncwarp": Hazard("swap_pairs<float>", "f((1,), (32,), (x, out, np.int32(1 - bad)))", "thread",
                          _shared("swap_pairs<float>", "float const*, float*, int"), tuple(np.arange(32) ^ 1)),
    "shuffle for syncwarp": Hazard("swap_pairs<float>", "f((1,), (32,), (x, out, np.int32(1 + bad)))", "thread",
                                   _shared("swap_pairs<float>", "float const*, float*, int"),
                                   tuple(np.arange(32) ^ 1)),
    "loop": Hazard("tiles<float>", "f((1,), (16,), (x, out, np.int32(1 - bad)))", "thread",
                   _shared("tiles<float>", "float const*, float*, int"),
                   tuple(np.minimum(np.arange(32) + 1, [15] * 16 + [31] * 16))),
    "global write": Hazard("both_write<float>", "f((1,), (32,), (out, np.int32(bad)))", "thread",
                           "Location is heap block", (1,) + (0,) * 31),
    "blocks write": Hazard("both_write<float>", "f((1 + bad,), (32,), (out, np.int32(0)))", "thread",
                           "Location is heap block", (1,) + (0,) * 31),
    "block reads a block": Hazard("chain<float>", "f((2,), (16,), (x, out, np.int32(bad)))", "thread",
                                  "Location is heap block"),
    "blocks far apart write": Hazard("first_last_write<float>", "f((1 + 33 * bad,), (32,), (out,))", "thread",
                                     "Location is heap block", (1,) + (0,) * 31),
    "blocks of a column write": Hazard("column_write<float>", "f((4, 1 + 7 * bad), (256,), (out,))", "thread",
                                       "Location is heap block", (1,) * 4 + (0,) * 28),
}


@pytest.mark.parametrize("hazard", list(HAZARDS))
def test_hazard_is_caught_under_sanitizer(hazard):
    """Each fault of :data:`HAZARDS` ends the sanitized run with the sanitizer's report; the
    same launch without the fault runs and gives the right result first."""
    h = HAZARDS[hazard]
    script = textwrap.dedent(f"""
        import sys, numpy as np
        sys.path.insert(0, {HERE!r})
        from test_emu_harness import module
        f = module().get_function({h.kernel!r})
        x, out = np.arange(40, dtype=np.float32), np.zeros(40, np.float32)
        bad = 0
        {h.call}
        assert out[:32].tolist() == {[float(v) for v in h.expected]!r}, out
        print("correct launch ok", flush=True)
        bad = 1
        {h.call}
        print("not caught", flush=True)
    """)
    res = subprocess.run([sys.executable, "-c", script], env=sanitized.env(h.sanitizer), capture_output=True,
                         text=True, timeout=300)
    assert "correct launch ok" in res.stdout, res.stderr[-3000:]
    assert "not caught" not in res.stdout
    assert res.returncode != 0 and h.report in res.stderr, res.stderr[-3000:]


@pytest.mark.parametrize("sanitizer", list(sanitized.RUNTIMES))
def test_kernels_under_sanitizer(sanitizer):
    """Every kernel once more, built under the sanitizer (in order; one shape per kernel path)."""
    sanitized.run_tests(sanitizer, "test_emu_kernels.py",
                        "inorder and (257 or 33 or dropout) or dims or empty or grid_stride")


def test_allocations_here_have_undefined_contents():
    """In these tests ``numpy.empty`` (the launch code's ``xp.empty`` on NumPy arrays) and the
    emulated GPU's ``cupy.empty`` give 0xFF bytes, not the zeros of a fresh NumPy allocation:
    an element that no kernel writes shows as NaN or -1."""
    import emu_cupy

    assert np.isnan(np.empty((1 << 20,), np.float32)).all()  # a fresh mapping: zeros in NumPy
    assert (np.empty((3, 5), np.int64, order="F") == -1).all()
    cupy = emu_cupy.numpy_as_cupy(None)
    y = cupy.empty((4, 3), np.float64)
    assert type(y).__module__ == "cupy" and np.isnan(y).all()
