"""How BLAS reads a stack of matrices as it is stored, shared by the CPU glue
(``luxlib/_looped``) and the GPU glue (``luxlib/cuda/_blas.py``).

A matrix whose rows have unit column stride is passed as it is (row stride ``ld``);
one whose columns have unit row stride (a Fortran-ordered or ``.T`` view) is passed as
the transpose of such a matrix, through the BLAS transpose flag. Anything else is
copied once.
"""

from ._validation import array_namespace


def c_order_steps(shape):
    """Strides, in elements, of a C-ordered array of ``shape``."""
    steps, step = [], 1
    for extent in reversed(shape):
        steps.append(step)
        step *= extent
    return tuple(reversed(steps))


def _leading(n_lead, stride_lead, n_unit, stride_unit, item):
    """Row stride (elements) of matrices whose ``unit`` axis is contiguous, else None."""
    if n_unit > 1 and stride_unit != item:
        return None
    if n_lead <= 1:  # a single row: any valid leading dimension will do
        return max(1, n_unit)
    if stride_lead % item or stride_lead // item < max(1, n_unit):
        return None
    return stride_lead // item


def matrix_layout(rows, cols, srow, scol, item):
    """``(trans, ld)`` of a ``rows x cols`` matrix with these byte strides as BLAS reads it
    as stored (see :func:`blas_operand`), or None when it must be copied."""
    ld = _leading(rows, srow, cols, scol, item)
    if ld is not None:
        return False, ld
    ld = _leading(cols, scol, rows, srow, item)
    if ld is not None:
        return True, ld
    return None


def blas_operand(a):
    """``(a, trans, ld)``: how BLAS reads the matrices in ``a``'s last two axes.

    ``trans`` False: rows of ``ld`` elements with unit column stride; True: the
    transpose of such a matrix (a Fortran-ordered or ``.T`` view), ``ld`` its
    column stride. Arrays in neither form (or with a batch stride that is not a
    whole number of elements) are copied once to C order, in their own namespace.
    """
    item = a.itemsize
    if all(s % item == 0 for s in a.strides[:-2]):
        layout = matrix_layout(*a.shape[-2:], *a.strides[-2:], item)
        if layout is not None:
            return (a,) + layout
    return array_namespace(a).ascontiguousarray(a), False, max(1, a.shape[-1])
