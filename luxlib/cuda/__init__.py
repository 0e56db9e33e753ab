"""CUDA backend (CuPy RawKernels) for ``GPUBroadcastOp``.

No CUDA kernels are registered yet: CuPy arrays run on the generic path, which is
written against the array's own namespace. Importing this package never requires a GPU.
"""
