"""CuPy's kernel-module calling convention over NumPy arrays, running the luxlib
``.cu`` sources on the CPU (``cuda_emu.h``: every CUDA thread a fiber).

``EmuModule(family).get_function("multiply<float>")(grid, block, args)`` launches a
kernel as ``cupy.RawModule(...).get_function`` would, so the luxlib launch code runs
unchanged. Arguments are checked against the kernel's C signature (a pointer takes a
C-contiguous ndarray of the pointee's dtype, a scalar a NumPy scalar of exactly the
parameter's type); each array is copied into a buffer of exactly its size for the
launch and copied back, so AddressSanitizer sees overruns of any argument (its builds also
check every index into a fixed-size array, ``__shared__`` ones included). Builds under
ThreadSanitizer (the race check) report two threads that access the same memory without a
barrier between them, one of them writing: two threads of a block, or of two blocks.

Builds (g++) are cached by content hash in ``$LUXLIB_EMU_CACHE`` (default: a
directory under the temporary directory).
"""

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
import threading

import numpy as np

from luxlib.cuda import _modules

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEDULES = {"inorder": 0, "shuffle": 1}
_LOCK = threading.Lock()
_LIBS = {}

C_SOURCE = """\
#include <stddef.h>
extern "C" {{
const char* lx_emu_launch(const unsigned* grid, const unsigned* block, void** args,
                          int schedule, unsigned seed, int kernel);
}}
"""


#: sanitizer -> g++ flags (the process must have the sanitizer's runtime preloaded)
SANITIZERS = {
    # ASan sees the arrays' buffers, and an overrun of a __shared__ array through a pointer by
    # the redzones between them (-fsanitize-sections: also where a kernel is not a template and
    # its arrays are in their own section); UBSan's bounds check sees an index past any
    # fixed-size array, the kernels' register arrays included
    "address": ("-fsanitize=address,bounds", "-fno-sanitize-recover=bounds", "-fsanitize-sections=lx_emu_shared",
                "-fno-omit-frame-pointer"),
    "thread": ("-fsanitize=thread", "-fno-omit-frame-pointer"),
}


def sanitize_default():
    """The sanitizer named by ``LUXLIB_EMU_SANITIZE`` (``address`` or ``thread``), or None."""
    name = os.environ.get("LUXLIB_EMU_SANITIZE") or None
    if name not in (None, *SANITIZERS):
        raise ValueError(f"LUXLIB_EMU_SANITIZE={name!r}: not one of {sorted(SANITIZERS)}")
    return name


def cache_dir():
    d = os.environ.get("LUXLIB_EMU_CACHE") or os.path.join(tempfile.gettempdir(), "luxlib-cuda-emu")
    os.makedirs(d, exist_ok=True)
    return d


def _generated(source_text, filename, exprs):
    # the kernels in an unnamed namespace: AddressSanitizer protects the statics (the __shared__
    # arrays) of internal templates only, not of templates with external linkage
    lines = ['#include "cuda_emu.h"', "namespace {", source_text, "}", ""]
    lines += [f"static const std::string lx_sig_text_{i} = emu::signature(&{e});" for i, e in enumerate(exprs)]
    lines.append('extern "C" {')
    for i, e in enumerate(exprs):
        lines.append(f"const char* lx_sig_{i}(void) {{ return lx_sig_text_{i}.c_str(); }}")
        lines.append(
            f"const char* lx_launch_{i}(const unsigned* g, const unsigned* b, void** a, int s, unsigned seed)"
            f" {{ return emu::launch(&{e}, g, b, a, s, seed); }}"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def build(source_text, filename, exprs, sanitize=None):
    """Compile ``source_text`` (a .cu file's text) with the emulation header into a shared
    library exporting ``lx_sig_<i>``/``lx_launch_<i>`` for each name expression, built under
    the sanitizer ``sanitize`` (a key of :data:`SANITIZERS`) if given."""
    # -fdata-sections: each static of the kernels (internal, _generated) in a section of its own,
    # `.bss._ZZ<name>`, which the linker script gathers into the __shared__ section
    flags = ["-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-fdata-sections", "-ffp-contract=off",
             "-fno-fast-math", "-Wall", "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unknown-pragmas",
             "-I" + HERE, "-I" + _modules.source_dir(), "-Wl,-T," + os.path.join(HERE, "shared_section.ld")]
    if sanitize:
        flags += SANITIZERS[sanitize]
    code = _generated(source_text, filename, exprs)
    header = b""
    for name in ("cuda_emu.h", "shared_section.ld"):
        with open(os.path.join(HERE, name), "rb") as f:
            header += f.read()
    key = hashlib.sha256(
        code.encode() + header + _modules.headers_digest().encode() + " ".join(flags).encode()
    ).hexdigest()[:20]
    with _LOCK:
        lib = _LIBS.get(key)
        if lib is not None:
            return lib
        d = cache_dir()
        so = os.path.join(d, f"{os.path.splitext(filename)[0]}-{key}.so")
        if not os.path.exists(so):
            cpp = os.path.join(d, f"{os.path.splitext(filename)[0]}-{key}.cpp")
            with open(cpp, "w") as f:
                f.write(code)
            tmp = so + f".{os.getpid()}.tmp"
            res = subprocess.run(["g++", *flags, cpp, "-o", tmp], capture_output=True, text=True)
            if res.returncode:
                raise RuntimeError(f"g++ failed on {filename}:\n{res.stderr}")
            os.replace(tmp, so)
        lib = ctypes.CDLL(so)
        _LIBS[key] = lib
        return lib


def _dims(d):
    d = tuple(int(v) for v in (d if isinstance(d, (tuple, list)) else (d,)))
    return (ctypes.c_uint * 3)(*(d + (1,) * (3 - len(d))))


class EmuFunction:
    def __init__(self, module, name, index):
        self.module, self.name = module, name
        lib = module.lib
        sig = getattr(lib, f"lx_sig_{index}")
        sig.restype = ctypes.c_char_p
        self.signature = [s for s in sig().decode().split(",") if s]
        self._launch = getattr(lib, f"lx_launch_{index}")
        self._launch.restype = ctypes.c_char_p
        self._launch.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint]

    def _code(self, dtype):
        return dtype.str[1:] if dtype.str[0] in "<|=" else "?"

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem:
            raise NotImplementedError("dynamic shared memory is not emulated")
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.signature)} parameters")
        copies = {}  # (address, bytes) of an array argument -> _device_copy's (array, data, block)
        try:
            keep, slots = self._arguments(args, copies)  # keep: what the slots point to
            err = self._launch(_dims(grid), _dims(block), slots, SCHEDULES[self.module.schedule], self.module.seed)
        finally:  # also when an argument is refused: the copies made so far are freed
            for a, data, buf in copies.values():
                if a.flags.writeable:
                    ctypes.memmove(a.ctypes.data, data, a.nbytes)
                _libc.free(buf)
        if err is not None:
            raise RuntimeError(f"{self.name}: {err.decode()}")

    def _arguments(self, args, copies):
        """``(keep, slots)``: the kernel's argument pointers after checking each argument
        against the signature (arrays copied into ``copies``)."""
        keep = []
        slots = (ctypes.c_void_p * len(args))()
        for i, (a, want) in enumerate(zip(args, self.signature)):
            if want.startswith("p"):
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: argument {i} must be an ndarray ({want}), got {type(a).__name__}")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: argument {i} is not C-contiguous")
                if self._code(a.dtype) != want[1:]:
                    raise TypeError(f"{self.name}: argument {i} has dtype {a.dtype}, the kernel takes {want}")
                k = (a.__array_interface__["data"][0], a.nbytes)
                if k not in copies:
                    for (p, nb) in copies:
                        if p < k[0] + k[1] and k[0] < p + nb:
                            raise ValueError(f"{self.name}: argument {i} partially overlaps another")
                    copies[k] = _device_copy(a)
                holder = ctypes.c_void_p(copies[k][1])
                keep.append(holder)
                slots[i] = ctypes.addressof(holder)
            elif want.startswith("s"):  # a struct by value: a NumPy structured scalar of its size
                if not isinstance(a, np.void) or a.dtype.names is None or a.dtype.itemsize != int(want[1:]):
                    raise TypeError(f"{self.name}: argument {i} must be a structured scalar of {want[1:]} bytes, "
                                    f"got {type(a).__name__} {getattr(a, 'dtype', '')}")
                arr = np.array(a)
                keep.append(arr)
                slots[i] = arr.ctypes.data
            else:
                if not isinstance(a, np.generic):
                    raise TypeError(f"{self.name}: argument {i} must be a NumPy scalar ({want}), got {type(a).__name__}")
                if self._code(a.dtype) != want:
                    raise TypeError(f"{self.name}: argument {i} is {a.dtype}, the kernel takes {want}")
                arr = np.array(a)
                keep.append(arr)
                slots[i] = arr.ctypes.data
        return keep, slots


_libc = ctypes.CDLL(None)  # the sanitized runtime's allocator when the process runs under it
_libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]

#: CuPy's allocations are aligned to (at least) this many bytes
DEVICE_ALIGNMENT = 256


def device_offset(a):
    """Where CuPy would place ``a`` past an alignment boundary: its byte offset into its base
    array, modulo DEVICE_ALIGNMENT (a view keeps the alignment of its offset). Tests replace
    it to place the launch buffers elsewhere."""
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    return (a.ctypes.data - base.ctypes.data) % DEVICE_ALIGNMENT


def _device_copy(a):
    """``(a, data, block)``: a copy of ``a``'s bytes at ``data`` in a new allocation ``block``
    (free it), ``device_offset(a)`` bytes past a DEVICE_ALIGNMENT boundary and ending where
    the allocation ends (AddressSanitizer sees a read past it)."""
    offset = device_offset(a)
    block = ctypes.c_void_p()
    if _libc.posix_memalign(ctypes.byref(block), DEVICE_ALIGNMENT, offset + max(a.nbytes, 1)):
        raise MemoryError(f"{a.nbytes} bytes")
    data = block.value + offset
    ctypes.memmove(data, a.ctypes.data, a.nbytes)
    return a, data, block.value


class EmuModule:
    """A kernel module over NumPy arrays: ``get_function(name)(grid, block, args)``.

    Parameters
    ----------
    family : str or None
        A luxlib family (its .cu file and name expressions), or None with ``source``.
    schedule : {"inorder", "shuffle"}
    seed : int
        Seed of the shuffled schedule.
    sanitize : {None, "address", "thread"}
        Build under this sanitizer (the process must have its runtime preloaded); default
        :func:`sanitize_default`.
    max_blocks : int, optional
        Lower cap on grid-stride grids (exercises the grid-stride loops).
    source, exprs : str, list of str
        A test kernel's text and name expressions instead of a family.
    """

    def __init__(self, family=None, schedule="inorder", seed=0, sanitize=None, max_blocks=None,
                 source=None, exprs=None, filename="test_kernel.cu"):
        self.schedule, self.seed = schedule, int(seed)
        self.sanitize = sanitize_default() if sanitize is None else sanitize
        if max_blocks is not None:
            self.max_blocks = max_blocks
        if family is not None:
            filename = _modules.FAMILIES[family][0]
            source = _modules.read_source(filename)
            exprs = _modules.name_expressions(family)
        self.exprs = list(exprs)
        self.lib = build(source, filename, self.exprs, self.sanitize)
        self._functions = {}

    def get_function(self, name):
        f = self._functions.get(name)
        if f is None:
            if name not in self.exprs:
                raise KeyError(f"{name} is not a name expression of this module")
            f = self._functions[name] = EmuFunction(self, name, self.exprs.index(name))
        return f


@functools.cache
def shared(family, schedule="inorder", seed=0, max_blocks=None):
    """The process's one :class:`EmuModule` of ``family`` with these options (built on first
    use), for tests that launch kernels without changing the module's test hooks."""
    return EmuModule(family, schedule=schedule, seed=seed, max_blocks=max_blocks)
