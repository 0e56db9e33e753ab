"""Each call on the GPU that holds its arrays.

A call's CuPy arrays must be on one device, and its kernels, cuBLAS and cuDNN calls and outputs
go there: the device of the call's mode, ``GPUBroadcastOp(device)``. Where that is not CuPy's
current device, the call makes it current for its duration (``cupy.cuda.Device``), as PyTorch
runs an op on its tensors' device. Without this, kernels launched on the current device would
dereference another device's memory: an illegal-address fault that ends the process's CUDA
context (or, where peer access is on, reads across the interconnect). Arrays on different
devices raise a ``ValueError`` naming them. A pullback runs on the forward's device too, and
takes a cotangent on that device only.

The check reads each array's ``.data.device_id`` and the current device; switching happens
only when they differ. Nothing here imports CuPy: a call with CuPy arrays finds it imported.
"""

import sys

__all__ = ["run"]


def run(op, arrays, impl, slot, kwargs):
    """:func:`luxlib._dispatch.run` for the GPU implementation ``impl`` of ``op``: its forward,
    or (``slot`` a capture slot of :func:`luxlib.vjp`) its vjp with the pullback appended to
    ``slot``, on the device of ``arrays``. The check is written out here, not in helpers: it
    runs on every GPU call."""
    device = None
    for x in arrays:
        if x is not None:
            d = x.data.device_id
            if device is None:
                device = d
            elif d != device:
                raise ValueError(f"{op}: the arrays must be on one GPU, got {_where(arrays, kwargs)}")
    cuda = sys.modules["cupy"].cuda  # imported: the call has CuPy arrays
    if cuda.runtime.getDevice() != device:
        with cuda.Device(device):
            return _run(op, device, impl, slot, kwargs)
    return _run(op, device, impl, slot, kwargs)


def _run(op, device, impl, slot, kwargs):
    if slot is None:
        return impl.forward(**kwargs)
    out, pullback = impl.vjp(**kwargs)
    slot.append(_Pullback(op, device, pullback))
    return out


def _where(arrays, kwargs):
    """The arrays by their names in ``kwargs``, their shapes and devices."""
    names = {id(v): k for k, v in kwargs.items()}
    return ", ".join(f"{names.get(id(a), '?')} {tuple(a.shape)} on device {a.data.device_id}"
                     for a in arrays if a is not None)


class _Pullback:
    """A GPU pullback run on the forward's device; the cotangent must be there too."""

    __slots__ = ("op", "device", "pullback")

    def __init__(self, op, device, pullback):
        self.op, self.device, self.pullback = op, device, pullback

    def __call__(self, dy):
        if dy.data.device_id != self.device:  # e.g. a NumPy dy copied to another current device
            raise ValueError(f"{self.op} pullback: dy {tuple(dy.shape)} is on device {dy.data.device_id}, "
                             f"the forward ran on device {self.device}")
        cuda = sys.modules["cupy"].cuda
        if cuda.runtime.getDevice() != self.device:
            with cuda.Device(self.device):
                return self.pullback(dy)
        return self.pullback(dy)
