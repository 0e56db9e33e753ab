"""Division by a launch constant without a division (``lx_divisor`` in ``common.cuh``,
host side ``luxlib.cuda._normalization.divisor``): the multiply-shift gives Python's
``//`` and ``%`` for every divisor and dividend of its range, in NumPy (the formula), on
the emulator (the C++ code, 32 and 64 bits), and the normalization kernels' per-element
paths compile to PTX without integer divisions."""

import re

import emu_module
import numpy as np
import pytest

from luxlib.cuda._modules import divisor

KERNEL = r"""
#include "common.cuh"
/* q[k] = n[k] / d, r[k] = n[k] % d */
template <typename I> __global__ void divmod(const I* n, I* q, I* r, lx_i64 count, lx_i64 d, lx_u64 d_mul,
                                                int d_shift)
{
    const lx_divisor<I> dv(d, d_mul, d_shift);
    for (lx_i64 k = (lx_i64)blockIdx.x * blockDim.x + threadIdx.x; k < count; k += (lx_i64)gridDim.x * blockDim.x) {
        q[k] = dv.div(n[k]);
        r[k] = dv.mod(n[k]);
    }
}
"""
TYPES = {32: ("divmod<unsigned>", np.uint32), 64: ("divmod<unsigned long long>", np.uint64)}


def divisors(bits):
    """1, 2, 3, 7, small primes, powers of two and their neighbours up to the largest
    divisor (2**31; 2**63 - 1: an int64), 2**31 - 1, and random ones of every magnitude."""
    top = 2**31 if bits == 32 else 2**63 - 1
    ds = {1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 25, 49, 641, 3136, 6700417, 2**31 - 1, top, top - 1}
    for k in range(1, bits):
        ds |= {2**k - 1, 2**k, 2**k + 1}
    rng = np.random.default_rng(bits)
    for k in range(2, bits):
        ds |= {int(v) for v in rng.integers(2 ** (k - 1), 2**k, size=3, dtype=np.uint64)}
    return sorted(d for d in ds if 1 <= d <= top)


def dividends(d, bits, rng):
    """0, 1, around d and its multiples, the top of the range (2**(bits - 1) - 1) and the
    multiples of d just below it, and random values, all below 2**(bits - 1)."""
    top = 2 ** (bits - 1) - 1
    near = {0, 1, 2, d - 1, d, d + 1, 2 * d - 1, 2 * d, 3 * d + 1, top, top - 1, top - 2}
    last = top // d * d
    for m in (last, last - d, last - 2 * d):
        near |= {m - 1, m, m + 1}
    vals = [v for v in near if 0 <= v <= top]
    vals += [int(v) for v in rng.integers(0, top, size=64, dtype=np.uint64, endpoint=True)]
    vals += [int(v) for v in rng.integers(0, min(top, 64 * d), size=32, dtype=np.uint64, endpoint=True)]
    return vals


@pytest.mark.parametrize("bits", [32, 64])
def test_divisor_arguments(bits):
    """mul fits the index type, shift = ceil(log2 d); the kernel argument types."""
    for d in divisors(bits):
        dd, mul, shift = divisor(d, bits)
        assert (type(dd), type(mul), type(shift)) == (np.int64, np.uint64, np.int32)
        assert int(dd) == d and 2 ** int(shift) >= d > 2 ** int(shift) // 2
        assert 2 ** (bits - 1) <= int(mul) < 2**bits


def test_divisor_rejects_out_of_range():
    for d, bits in ((0, 32), (-3, 64), (2**31 + 1, 32), (2**63, 64)):
        with pytest.raises(ValueError, match="divisor"):
            divisor(d, bits)
    with pytest.raises(ValueError, match="bits"):
        divisor(3, 16)


def test_formula_32_bits_in_numpy():
    """The 32-bit formula over many dividends, every product exact in uint64: [0, 20000),
    the last 20000 below 2**31 and random ones, for 1 ... 1000 and the larger divisors."""
    rng = np.random.default_rng(5)
    n = np.concatenate([np.arange(20000, dtype=np.uint64), rng.integers(0, 2**31, 40000, dtype=np.uint64),
                        np.arange(2**31 - 20000, 2**31, dtype=np.uint64)])
    for d in list(range(1, 1001)) + divisors(32):
        _, mul, shift = divisor(d, 32)
        q = ((2 * n) * mul >> np.uint64(32)) >> np.uint64(shift)
        np.testing.assert_array_equal(q, n // np.uint64(d), err_msg=f"d = {d}")


def _emulated(bits, d, n, mul_delta=0):
    name, dtype = TYPES[bits]
    mod = emu_module.EmuModule(source=KERNEL, exprs=[v[0] for v in TYPES.values()], filename="divisor_test.cu")
    n = np.array(n, dtype)
    q, r = np.zeros_like(n), np.zeros_like(n)
    dd, mul, shift = divisor(d, bits)
    mod.get_function(name)((2,), (64,), (n, q, r, np.int64(n.size), dd, np.uint64(int(mul) + mul_delta), shift))
    return n, q, r


@pytest.mark.parametrize("bits", [32, 64])
def test_emulated_divisor_matches_python(bits):
    """lx_divisor<lx_u32 / lx_u64> on the emulator against Python's // and %."""
    rng = np.random.default_rng(bits + 1)
    for d in divisors(bits):
        n, q, r = _emulated(bits, d, dividends(d, bits, rng))
        want = [(int(v) // d, int(v) % d) for v in n]
        assert [(int(a), int(b)) for a, b in zip(q, r)] == want, f"d = {d}"


@pytest.mark.parametrize("bits", [32, 64])
def test_emulated_divisor_catches_a_wrong_multiplier(bits):
    """The dividends above expose a multiplier one too small (the round-down constant)."""
    rng = np.random.default_rng(0)
    for d in (3, 7, 641, 2**31 - 1):
        n, q, _ = _emulated(bits, d, dividends(d, bits, rng), mul_delta=-1)
        assert any(int(a) != int(v) // d for a, v in zip(q, n)), f"d = {d}"


def _ptx(family):
    nc = pytest.importorskip("luxlib_nvrtc")
    pytest.importorskip("cuda.bindings")
    return nc.ptx(family, "compute_90")


def test_elementwise_normalization_kernels_do_not_divide():
    """No integer div/rem in the PTX of the per-element kernels (and backward pass 1),
    but multiply-highs for both index widths."""
    ptx = _ptx("normalization")
    for kernel in ("norm_forward", "norm_backward_dx", "norm_backward_dx_cols", "norm_backward_partial"):
        for typ in ("f", "d", "6__half"):
            entry = f"_Z{len(kernel)}{kernel}I{typ}E"
            start = ptx.index(".entry " + entry)
            body = ptx[start:ptx.index("\n}", start)]
            assert not re.findall(r"\b(?:div|rem)\.[su](?:32|64)\b", body), (kernel, typ)
            if kernel in ("norm_forward", "norm_backward_dx"):
                assert "mul.hi.u32" in body and "mul.hi.u64" in body, (kernel, typ)
