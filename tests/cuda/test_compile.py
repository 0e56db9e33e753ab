"""Compile gate: every .cu file, with the real options and every name expression,
compiles with NVRTC for sm_80 and sm_90 to CUBIN, without warnings, register spills,
stack frames or local memory. Needs no GPU (nvidia-cuda-nvrtc, nvidia-cuda-runtime
and cuda-bindings wheels: the `test` extra on Linux)."""

import functools
import os
import re

import luxlib_nvrtc as nc
import pytest

from luxlib.cuda import _modules, _normalization

ARCHS = ("sm_80", "sm_90")


@functools.cache
def _compiled(family, arch):
    return nc.compile_family(family, arch)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", sorted(_modules.FAMILIES))
def test_compiles_without_warnings(family, arch):
    cubin, log, lowered = _compiled(family, arch)
    assert cubin[:4] == b"\x7fELF"
    warnings = [line for line in log.splitlines() if re.search(r"warning", line, re.IGNORECASE)]
    assert not warnings, "\n".join(warnings)
    assert set(lowered) == set(_modules.name_expressions(family))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", sorted(_modules.FAMILIES))
def test_no_spills_or_local_memory(family, arch):
    _, log, lowered = _compiled(family, arch)
    # ptxas reports every entry function it compiled
    for name in lowered.values():
        assert f"Compiling entry function '{name}'" in log
    assert nc.resource_problems(log) == []


def test_every_cu_file_is_a_family():
    files = {f for f in os.listdir(_modules.source_dir()) if f.endswith(".cu")}
    assert files == {f for f, _ in _modules.FAMILIES.values()}


def test_sources_carry_line_directive():
    for family, (filename, _) in _modules.FAMILIES.items():
        text = _modules.read_source(filename)
        assert f'#line 1 "{filename}"' in text.splitlines()[1]


def test_spill_detector():
    log = "ptxas . 16 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads"
    assert len(nc.resource_problems(log)) == 2
    assert nc.resource_problems("ptxas . 0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads") == []


def test_compile_error_names_the_file(tmp_path, monkeypatch):
    bad = "template <typename T> __global__ void multiply(T* p) { undefined_thing(p); }\n"
    monkeypatch.setattr(_modules, "_text", lambda name: bad if name.endswith(".cu") else "")
    with pytest.raises(RuntimeError, match=r"dropout\.cu\(1\)"):
        nc.compile_family("dropout", "sm_80")


# kernel -> (family, 16-byte vectors or not, loads of one item before its store, arrays
# streamed per item): the elementwise loops load LX_UNROLL items of every streamed array
# before the first store (elementwise.cuh, lx_norm_elements)
LOADS_FIRST = {
    "bias_act_forward": ("bias_activation", True, 1, 1),
    "act_forward": ("bias_activation", True, 1, 1),
    "act_backward": ("bias_activation", True, 2, 2),
    "multiply": ("dropout", True, 2, 2),
    "multiply_channel": ("dropout", True, 1, 1),
    "norm_forward": ("normalization", False, 5, 1),  # x, mean, rstd, scale, bias
    "norm_backward_dx": ("normalization", False, 8, 2),  # x, dy, scale, bias, mean, rstd, mh, mhx
}


@functools.cache
def _ptx(family):
    return nc.ptx(family, "compute_90")


def _loads_before_first_store(family, kernel, vector):
    """Global loads before the first global store in the PTX of the float kernel; with
    ``vector``, vector loads before the first vector store (the 16-byte loop)."""
    ptx = _ptx(family)
    start = ptx.index(f".entry _Z{len(kernel)}{kernel}IfE")
    lines = ptx[start:ptx.index("\n}", start)].splitlines()
    if vector:
        lines = [line for line in lines if re.search(r"(ld|st)\.global(\.nc)?\.v", line)]
    first_store = next(i for i, line in enumerate(lines) if "st.global" in line)
    return sum("ld.global" in line for line in lines[:first_store])


def _define(filename, name):
    """The value of ``#define name <int>`` in a kernel source."""
    return int(re.search(rf"#define {name} (\d+)", open(os.path.join(_modules.source_dir(), filename)).read())[1])


@pytest.mark.parametrize("kernel", sorted(LOADS_FIRST))
def test_loads_issued_before_the_first_store(kernel):
    """In the PTX of the float kernel, the first (vector) global store comes after the loads
    of all LX_UNROLL items: one item's loads plus LX_UNROLL - 1 more of each streamed array,
    so a thread has LX_UNROLL loads of each array in flight, not one."""
    family, vector, per_item, streams = LOADS_FIRST[kernel]
    unroll = _define("common.cuh", "LX_UNROLL")
    assert unroll == _modules.UNROLL
    want = unroll * streams if vector else per_item + (unroll - 1) * streams
    assert _loads_before_first_store(family, kernel, vector) >= want, kernel


@pytest.mark.parametrize("kernel, streams", [("norm_forward", 1), ("norm_backward_dx", 2)])
def test_packed_loads_issued_before_the_first_store(kernel, streams):
    """The same for the 16-byte pack path of the elementwise normalization kernels: the
    float kernel's PACKED_STEP / 4 packs of each streamed array are loaded before the first
    pack is stored."""
    step = _define("normalization.cu", "LX_NORM_PACKED_STEP")
    assert step == _normalization.PACKED_STEP
    assert _loads_before_first_store("normalization", kernel, vector=True) >= step // 4 * streams
