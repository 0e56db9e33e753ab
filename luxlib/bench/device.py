"""Where the contenders run: the CPU (NumPy arrays) or a CUDA device (CuPy arrays).

A device puts a case's NumPy inputs where the contenders run, names the contenders
that take part, makes a timed call wait for the work it queued (a GPU launch returns
before its kernel ends), measures the copy bandwidth that bandwidth-bound rows are
compared with, makes the copy of a row's own bytes that is timed beside it, and brings
outputs back to NumPy for the correctness check.
"""

import statistics

import numpy as np

from ..cuda import _modules
from ..cuda._cudnn import status as cudnn_status
from .timing import copy_bandwidth, interleaved

__all__ = ["CPU", "CUDA", "DeviceUnavailable", "get_device", "to_numpy"]


class DeviceUnavailable(RuntimeError):
    """The requested device cannot run here (no CuPy, no CUDA device)."""


def to_numpy(v):
    """An output of any contender (NumPy/CuPy array, torch tensor on any device) as NumPy."""
    if hasattr(v, "detach"):  # a torch tensor, on any device
        return v.detach().cpu().numpy()
    if hasattr(v, "get") and not isinstance(v, np.ndarray):  # a CuPy array
        return v.get()
    return np.asarray(v)


class CPU:
    """NumPy arrays; contenders luxlib, torch (CPU) and the NumPy compositions."""

    name = "cpu"
    contenders = ("luxlib", "torch", "numpy")
    xp = np  # the array module of the device's arrays

    def put(self, arrays):
        return arrays

    def finish(self, out):
        """Return ``out`` once the work that produced it has finished (at once on the CPU)."""
        return out

    def torch_usable(self, torch):
        return torch is not None

    def info(self):
        return {}

    def copy_bandwidth(self, quick):
        """``(GB/s, method)`` of one ``np.copyto`` between two pre-faulted float32 arrays."""
        mib = 16 if quick else 256
        return copy_bandwidth(mib * 2**20, 3 if quick else 5), (
            f"median of np.copyto between two pre-faulted float32 arrays of {mib} MiB on one thread; "
            "bytes = 2 x array size (read + write)"
        )

    def same_size_copy(self, amount):
        """A call copying one float32 array of ``amount / 2`` bytes into another, both
        written before (``copyto`` of the device's array module; on the CPU one thread):
        the copy that moves a row's bytes, timed with it."""
        xp = self.xp
        src = xp.ones(max(1, amount // 8), xp.float32)
        dst = xp.zeros_like(src)
        return lambda: xp.copyto(dst, src)

    def fresh_copy_bandwidth(self, quick):
        """``(GB/s, method)`` of ``x.copy()``: what an op pays for a new output array too."""
        mib = 16 if quick else 256
        return copy_bandwidth(mib * 2**20, 3 if quick else 5, fresh=True), (
            f"median of x.copy() of a float32 array of {mib} MiB on one thread (a new output each time, "
            "page faults and the kernel's zeroing included); bytes = 2 x array size"
        )


class CUDA(CPU):
    """CuPy arrays on the current CUDA device; contenders luxlib and torch (CUDA).

    The NumPy compositions are CPU code, so they do not take part; torch does when
    ``torch.cuda.is_available()``.
    """

    name = "cuda"
    contenders = ("luxlib", "torch")

    def __init__(self):
        try:
            import cupy
        except ImportError as exc:
            raise DeviceUnavailable(f"--device cuda needs CuPy, which is not importable ({exc})") from None
        if not cupy.cuda.is_available():
            raise DeviceUnavailable("--device cuda: CuPy finds no CUDA device")
        self.cupy = self.xp = cupy

    def put(self, arrays):
        return {k: self.cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}

    def finish(self, out):
        # the whole device: torch launches on its own streams
        self.cupy.cuda.runtime.deviceSynchronize()
        return out

    def torch_usable(self, torch):
        """Whether torch runs on CUDA here; if so, its float32 convolutions and matmuls are
        set to full float32 precision (TF32 off, cuDNN's default on), as luxlib computes."""
        if torch is None or not torch.cuda.is_available():
            return False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return True

    def info(self):
        cp = self.cupy
        dev = cp.cuda.Device()
        props = cp.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"]
        _modules._driver()  # binds luxlib's launcher now, as the first launch would
        return {
            "gpu": name.decode() if isinstance(name, bytes) else str(name),
            "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "cupy": cp.__version__,
            "cudnn": cudnn_status(),  # whether luxlib's convolutions run on cuDNN
            "cuda_launch": _modules.launch_status(),
        }

    def fresh_copy_bandwidth(self, quick):
        return None, "not measured: CuPy's memory pool hands freed device memory out again"

    def copy_bandwidth(self, quick):
        """``(GB/s, method)`` of one device-to-device ``cupy.copyto`` (read + write)."""
        cp = self.cupy
        mib = 16 if quick else 1024
        src = cp.ones(mib * 2**18, cp.float32)
        dst = cp.zeros_like(src)
        times, _, _ = interleaved({"copy": lambda: self.finish(cp.copyto(dst, src))}, 3 if quick else 20)
        return 2 * src.nbytes / statistics.median(times["copy"]) / 1e9, (
            f"median of cupy.copyto between two float32 device arrays of {mib} MiB, synchronized; "
            "bytes = 2 x array size (read + write)"
        )


def get_device(name):
    """The device called ``name`` (``"cpu"`` or ``"cuda"``); raises :class:`DeviceUnavailable`."""
    if name == "cpu":
        return CPU()
    if name == "cuda":
        return CUDA()
    raise ValueError(f"unknown device {name!r}")
