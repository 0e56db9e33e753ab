"""Compile luxlib's .cu files with NVRTC through cuda-python (no GPU needed).

The NVRTC library comes from the ``nvidia-cuda-nvrtc`` wheel and the CUDA headers
(cuda_fp16.h) from ``nvidia-cuda-runtime``; cuda-python finds the library itself.
"""

import contextlib
import glob
import os
import re

from luxlib.cuda import _modules


def cuda_include_dir():
    """The include directory of the nvidia-cuda-runtime wheel (holding cuda_fp16.h)."""
    import nvidia

    for base in nvidia.__path__:
        for cand in sorted(glob.glob(os.path.join(base, "*", "include"))):
            if os.path.exists(os.path.join(cand, "cuda_fp16.h")):
                return cand
    raise RuntimeError("cuda_fp16.h not found: pip install nvidia-cuda-runtime")


def _check(result, prog=None):
    from cuda.bindings import nvrtc

    err = result[0]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = program_log(prog) if prog is not None else ""
        raise RuntimeError(f"NVRTC error {err}: {log}")
    return result[1:] if len(result) > 2 else (result[1] if len(result) == 2 else None)


def program_log(prog):
    from cuda.bindings import nvrtc

    size = _check(nvrtc.nvrtcGetProgramLogSize(prog))
    buf = b" " * size
    _check(nvrtc.nvrtcGetProgramLog(prog, buf))
    return buf.rstrip(b"\0 ").decode(errors="replace")


@contextlib.contextmanager
def _program(family):
    """An NVRTC program of ``family``'s source with every name expression added."""
    from cuda.bindings import nvrtc

    filename = _modules.FAMILIES[family][0]
    src = _modules.read_source(filename).encode()
    prog = _check(nvrtc.nvrtcCreateProgram(src, filename.encode(), 0, [], []))
    try:
        for e in _modules.name_expressions(family):
            _check(nvrtc.nvrtcAddNameExpression(prog, e.encode()))
        yield prog
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _compile(prog, family, arch, extra_options=()):
    from cuda.bindings import nvrtc

    opts = list(_modules.compile_options()) + [f"--gpu-architecture={arch}", "-I" + cuda_include_dir(),
                                               *extra_options]
    err = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])[0]
    log = program_log(prog)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"{_modules.FAMILIES[family][0]} ({arch}) failed to compile:\n{log}")
    return log


def compile_family(family, arch, extra_options=()):
    """Compile ``family`` for ``arch`` (e.g. ``"sm_80"``) to CUBIN with the real options and
    every name expression. Returns ``(cubin bytes, log text, {name expression: lowered name})``."""
    from cuda.bindings import nvrtc

    with _program(family) as prog:
        log = _compile(prog, family, arch, (
            "--ptxas-options=-v",
            "--ptxas-options=--warn-on-spills",
            "--ptxas-options=--warn-on-local-memory-usage",
            *extra_options,
        ))
        lowered = {e: _check(nvrtc.nvrtcGetLoweredName(prog, e.encode())).decode()
                   for e in _modules.name_expressions(family)}
        size = _check(nvrtc.nvrtcGetCUBINSize(prog))
        cubin = b" " * size
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin))
        return cubin, log, lowered


def ptx(family, arch):
    """The PTX of ``family`` compiled for the virtual architecture ``arch`` (e.g. ``"compute_90"``)."""
    from cuda.bindings import nvrtc

    with _program(family) as prog:
        _compile(prog, family, arch)
        buf = b" " * _check(nvrtc.nvrtcGetPTXSize(prog))
        _check(nvrtc.nvrtcGetPTX(prog, buf))
    return buf.decode(errors="replace")


_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_STACK = re.compile(r"(\d+) bytes stack frame")


def resource_problems(log):
    """Lines of a ptxas -v log that show spills, stack frames or local memory."""
    bad = []
    for line in log.splitlines():
        m = _SPILL.search(line)
        if m and (int(m.group(1)) or int(m.group(2))):
            bad.append(line)
        m = _STACK.search(line)
        if m and int(m.group(1)):
            bad.append(line)
        if "lmem" in line and not re.search(r"\b0 bytes lmem", line):
            bad.append(line)
    return bad
