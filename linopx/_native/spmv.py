"""The sparse product `y = A x` as a JAX primitive over the native CPU kernel.

`spmv(pattern, values, x)` computes the product of the COO matrix `(values, pattern)` with `x`.
The pattern is static (a `SparsityPattern`); its compressed form (a "plan") is worked out once per
pattern at trace time and memoised on it. The primitive is

- bilinear in `(values, x)`: its JVP is `spmv(dvalues, x) + spmv(values, dx)`, and its transpose
  with respect to `x` is the product with the transposed plan, with respect to `values` the
  entrywise `ct[rows] * x[cols]` (a gather, on the nonzeros only), so forward and reverse mode,
  `jax.linear_transpose` and higher derivatives all work;
- batched natively: `values` of shape `(B, nnz)` and/or `x` of shape `(B, n)`, one call;
- lowered to the FFI kernel on the CPU, and to the same product written in XLA operations on any
  other platform (so a program traced here and compiled for another backend is still right).

Which plan a pattern gets (forms of `sparse_kernels.cc`):
- rows sorted (CSR order, what `from_scipy` and most builders give): form 0, a gather per row;
- else columns sorted (the transpose of a row-sorted matrix, i.e. `A.T` of the above): form 1,
  a scatter per column of the same arrays, as SciPy's product with a CSC matrix;
- else: form 2, a gather per row through a permutation of the values into row order.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from . import SPMV_TARGET

_KERNEL_DTYPES = (np.float32, np.float64, np.complex64, np.complex128)


class Plan:
    """The compressed form of a pattern for the kernel; hashable by the pattern's digest."""

    __slots__ = ("_pattern_t_plan", "a", "b", "c", "cols", "form", "key", "m", "n", "rows")

    def __init__(self, form, a, b, c, rows, cols, shape, key):
        self.form = form
        self.a, self.b, self.c = a, b, c
        # The entries' coordinates in the order of the values (for the values' cotangent).
        self.rows, self.cols = rows, cols
        self.m, self.n = shape
        self.key = key

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self.key == other.key

    def __repr__(self) -> str:
        return f"Plan(form={self.form}, shape=({self.m}, {self.n}), nnz={self.rows.shape[0]})"

    def transposed(self) -> Plan:
        """The plan of the transposed pattern (same values, `Aᵀ`)."""
        return self._pattern_t_plan


def _pointers(sorted_index: np.ndarray, length: int, itype) -> np.ndarray:
    counts = np.bincount(sorted_index, minlength=length)
    return np.concatenate([[0], np.cumsum(counts)]).astype(itype)


def _make_plan(pattern, rows_sorted: bool, cols_sorted: bool) -> Plan:
    rows, cols, (m, n) = pattern.rows, pattern.cols, pattern.shape
    itype = rows.dtype
    empty = np.zeros(0, itype)
    if rows_sorted:
        form, a, b, c = 0, _pointers(rows, m, itype), cols, empty
    elif cols_sorted:
        form, a, b, c = 1, _pointers(cols, n, itype), rows, empty
    else:
        order = np.lexsort((cols, rows)).astype(itype)
        form, a, b, c = 2, _pointers(rows[order], m, itype), cols[order], order
    for arr in (a, b, c):
        arr.flags.writeable = False
    return Plan(form, a, b, c, rows, cols, (m, n), key=pattern.key)


def plan_of(pattern) -> Plan:
    """The kernel's plan for `pattern` (memoised), linked to its transpose's."""
    plan = _memo_plan(pattern)
    if not hasattr(plan, "_pattern_t_plan"):
        plan_t = _memo_plan(pattern.transpose())
        plan._pattern_t_plan = plan_t
        plan_t._pattern_t_plan = plan
    return plan


def _memo_plan(pattern) -> Plan:
    # The sortedness flags are memoised too: read them before `memo` takes the pattern's
    # (non-reentrant) lock.
    rows_sorted, cols_sorted = pattern.rows_sorted, pattern.cols_sorted
    return pattern.memo("native_plan", lambda: _make_plan(pattern, rows_sorted, cols_sorted))


def supports(dtype) -> bool:
    return np.dtype(dtype).type in _KERNEL_DTYPES


# ---------------------------------------------------------------------------------------------
# The primitive

spmv_p = Primitive(SPMV_TARGET)


def _batch_shape(values_shape, x_shape) -> tuple[int, ...]:
    bv, bx = tuple(values_shape[:-1]), tuple(x_shape[:-1])
    return bv or bx


def _abstract_eval(values, x, *, plan):
    bv, bx = values.shape[:-1], x.shape[:-1]
    if bv and bx and bv != bx:
        raise ValueError(f"linopx_spmv: batch shapes {bv} and {bx} differ")
    if values.shape[-1] != plan.rows.shape[0] or x.shape[-1] != plan.n:
        raise ValueError(
            f"linopx_spmv: values {values.shape} and x {x.shape} do not fit a "
            f"({plan.m}, {plan.n}) pattern with {plan.rows.shape[0]} entries"
        )
    if values.dtype != x.dtype:
        raise ValueError(f"linopx_spmv: values ({values.dtype}) and x ({x.dtype}) differ in dtype")
    shape = _batch_shape(values.shape, x.shape) + (plan.m,)
    return jax.core.ShapedArray(shape, values.dtype)


def _xla_product(values, x, *, plan):
    """The same product in XLA operations (gather and segment sum), batched like the kernel."""
    prod = values * x[..., plan.cols]  # (*batch, nnz): an unbatched operand broadcasts
    y = jax.ops.segment_sum(jnp.moveaxis(prod, -1, 0), plan.rows, num_segments=plan.m)
    return jnp.moveaxis(y, 0, -1)


def _ffi_product(values, x, *, plan):
    out = jax.ShapeDtypeStruct(_batch_shape(values.shape, x.shape) + (plan.m,), values.dtype)
    return jax.ffi.ffi_call(SPMV_TARGET, out)(
        plan.a,
        plan.b,
        plan.c,
        values,
        x,
        form=np.int64(plan.form),
        m=np.int64(plan.m),
        n=np.int64(plan.n),
    )


# Outside `jit`: compile the primitive alone (once per plan, shapes and dtype), for the default
# backend, through the lowering rules below.
_jitted = jax.jit(lambda values, x, plan: spmv_p.bind(values, x, plan=plan), static_argnames="plan")
spmv_p.def_impl(lambda values, x, *, plan: _jitted(values, x, plan))
spmv_p.def_abstract_eval(_abstract_eval)
mlir.register_lowering(spmv_p, mlir.lower_fun(_xla_product, multiple_results=False))
mlir.register_lowering(spmv_p, mlir.lower_fun(_ffi_product, multiple_results=False), platform="cpu")


def _sum_to(ct, batch_shape):
    """Sum the leading batch axes of `ct` that the primal did not have."""
    extra = ct.ndim - 1 - len(batch_shape)
    return ct.sum(axis=tuple(range(extra))) if extra else ct


def _values_cotangent(ct, values, x, *, plan):
    # d<ct, A x>/d values[k] = ct[rows[k]] x[cols[k]]: entrywise, on the nonzeros only.
    out = ct[..., plan.rows] * x[..., plan.cols]
    return _sum_to(out, values.aval.shape[:-1])


def _x_cotangent(ct, values, x, *, plan):
    out = spmv_p.bind(values, ct, plan=plan.transposed())
    return _sum_to(out, x.aval.shape[:-1])


ad.defbilinear(spmv_p, _values_cotangent, _x_cotangent)


def _batch(args, dims, *, plan):
    # The kernel takes each operand either unbatched or with the output's whole batch. The new
    # axis goes to the front; an operand that is mapped, or that already had batch axes (a nested
    # vmap), is brought to the whole batch `(size, *old)`; an unbatched, unmapped one stays so.
    old = _batch_shape(
        *(a.shape if d is None else a.shape[:d] + a.shape[d + 1 :] for a, d in zip(args, dims))
    )
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    full = []
    for a, d in zip(args, dims):
        if d is None:
            if a.ndim > 1:
                a = jnp.broadcast_to(a, (size,) + a.shape)
        else:
            a = jnp.moveaxis(a, d, 0)
            if a.ndim - 2 < len(old):  # mapped, but without the older batch axes
                a = a.reshape((size,) + (1,) * len(old) + a.shape[-1:])
                a = jnp.broadcast_to(a, (size, *old, a.shape[-1]))
        full.append(a)
    return spmv_p.bind(*full, plan=plan), 0


batching.primitive_batchers[spmv_p] = _batch


def spmv(pattern, values: Any, x: Any) -> jax.Array:
    """`A x` for the COO matrix `(values, pattern)`: values and x of one supported dtype."""
    return spmv_p.bind(values, x, plan=plan_of(pattern))
