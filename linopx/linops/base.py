"""The operator interface: `AbstractLinearOperator`."""

from __future__ import annotations

import abc
import functools
import numbers
import threading
import weakref
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _tree
from .tags import SQUARE_ONLY_TAGS, as_tags


class AbstractLinearOperator(eqx.Module):
    """A linear map between two pytrees of arrays.

    Subclasses implement `mv`, `as_matrix`, `transpose`, `in_structure` and `out_structure`.
    Everything else (sizes, `.T`, arithmetic) is derived here. Operators are immutable pytrees:
    their arrays are leaves (and so differentiable and batchable), their tags and structures are static.

    Arithmetic builds lazy composites:

    ```python
    A = lx.MatrixLinearOperator(a)
    B = lx.DiagonalLinearOperator(d)
    C = 2.0 * A @ B - A.T          # nothing is multiplied out yet
    C.mv(v)                        # == 2 * a @ (d * v) - a.T @ v
    ```
    """

    # Make NumPy defer to our reflected operators (`__rmul__`, `__rmatmul__`) instead of treating an
    # operator as an opaque object and building an object array (`np.ones(2) * A` would otherwise
    # return an array of operators rather than raise).
    __array_ufunc__ = None

    @abc.abstractmethod
    def mv(self, vector: Any) -> Any:
        """Apply the operator: return `A v`, a pytree with the structure of `out_structure()`."""

    @abc.abstractmethod
    def as_matrix(self) -> jax.Array:
        """Return the dense `(out_size, in_size)` matrix of the operator (leaves flattened in order)."""

    @abc.abstractmethod
    def transpose(self) -> "AbstractLinearOperator":
        """Return the (unconjugated) transpose `Aᵀ`, mapping `out_structure` to `in_structure`."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # Every `transpose()` notes on its result which operator it transposes, so that `A.T @ A`
        # can be recognised as a Gram matrix (positive semidefinite) when it is built; see
        # `note_origin` and `ComposedLinearOperator`.
        fn = cls.__dict__.get("transpose")
        if callable(fn) and not getattr(fn, "_notes_origin", False):

            @functools.wraps(fn)
            def transpose(self, _fn=fn):
                out = _fn(self)
                note_origin(out, "transpose", self)
                return out

            transpose._notes_origin = True
            cls.transpose = transpose

    @abc.abstractmethod
    def in_structure(self) -> Any:
        """Return the pytree of `jax.ShapeDtypeStruct` that `mv` accepts."""

    @abc.abstractmethod
    def out_structure(self) -> Any:
        """Return the pytree of `jax.ShapeDtypeStruct` that `mv` returns."""

    def in_size(self) -> int:
        """Total number of scalars in the input."""
        return _tree.structure_size(self.in_structure())

    def out_size(self) -> int:
        """Total number of scalars in the output."""
        return _tree.structure_size(self.out_structure())

    @property
    def T(self) -> "AbstractLinearOperator":
        """Alias of `transpose()`."""
        return self.transpose()

    # Arithmetic. The composite classes live in `composite.py`; imported lazily to avoid a cycle.
    def __add__(self, other: Any) -> "AbstractLinearOperator":
        from .composite import AddLinearOperator

        if not isinstance(other, AbstractLinearOperator):
            return NotImplemented
        return AddLinearOperator(self, other)

    def __sub__(self, other: Any) -> "AbstractLinearOperator":
        from .composite import AddLinearOperator, NegLinearOperator

        if not isinstance(other, AbstractLinearOperator):
            return NotImplemented
        return AddLinearOperator(self, NegLinearOperator(other))

    def __neg__(self) -> "AbstractLinearOperator":
        from .composite import NegLinearOperator

        return NegLinearOperator(self)

    def __mul__(self, other: Any) -> "AbstractLinearOperator":
        from .composite import MulLinearOperator

        if isinstance(other, AbstractLinearOperator):
            raise TypeError(
                "`A * B` of two operators is not defined; use `A @ B` for composition."
            )
        return MulLinearOperator(self, check_scalar(other, "multiply"))

    def __rmul__(self, other: Any) -> "AbstractLinearOperator":
        return self.__mul__(other)

    def __truediv__(self, other: Any) -> "AbstractLinearOperator":
        from .composite import DivLinearOperator

        if isinstance(other, AbstractLinearOperator):
            raise TypeError("`A / B` of two operators is not defined; use `lx.linear_solve`.")
        return DivLinearOperator(self, check_scalar(other, "divide"))

    def __matmul__(self, other: Any) -> "AbstractLinearOperator":
        from .composite import ComposedLinearOperator

        if not isinstance(other, AbstractLinearOperator):
            raise TypeError(
                "`A @ x` needs an operator on the right; to apply `A` to a vector use `A.mv(x)`."
            )
        return ComposedLinearOperator(self, other)

    def __rmatmul__(self, other: Any) -> "AbstractLinearOperator":
        raise TypeError(
            "`x @ A` with a non-operator `x` is not defined; wrap matrices in "
            "`lx.MatrixLinearOperator` first."
        )


# What `transpose()` and `lx.conj` made each operator from: `id(result) -> (weakref to result,
# {how: weakref to source})`, entries removed when the result dies. Kept outside the operators (an
# attribute on them would change their equality and hashing).
_ORIGINS: dict = {}
_ORIGINS_LOCK = threading.Lock()


def note_origin(result: Any, how: str, source: Any) -> None:
    """Record that the operator `result` is `how` ("transpose" or "conj") of `source`, and, when
    `source` is itself the other one of something, that `result` is the "adjoint" of that
    (`conj(A.T)`, `conj(A).T`: recorded here, while the intermediate is alive). Weak references:
    nothing is kept alive. Read by `origin`. Only the object made by the call carries it: a copy
    rebuilt from leaves (e.g. crossing a `jit` boundary) does not."""
    if result is source or not isinstance(result, AbstractLinearOperator):
        return
    other = {"transpose": "conj", "conj": "transpose"}[how]
    inner = origin(source, other)
    try:
        result_ref = weakref.ref(result)
        notes = {how: weakref.ref(source)}
        if inner is not None:
            notes["adjoint"] = weakref.ref(inner)
    except TypeError:  # an operator that cannot be weakly referenced: no record
        return
    key = id(result)
    with _ORIGINS_LOCK:
        entry = _ORIGINS.get(key)
        if entry is not None and entry[0]() is result:
            entry[1].update(notes)
            return
        _ORIGINS[key] = (result_ref, notes)
    weakref.finalize(result, _forget_origin, key, result_ref)


def _forget_origin(key: int, result_ref) -> None:
    with _ORIGINS_LOCK:
        entry = _ORIGINS.get(key)
        if entry is not None and entry[0] is result_ref:
            del _ORIGINS[key]


def origin(operator: Any, how: str) -> Any:
    """The operator that `operator` was made from by `how` ("transpose", "conj" or "adjoint"), if
    recorded and still alive, else None."""
    entry = _ORIGINS.get(id(operator))
    if entry is None or entry[0]() is not operator:
        return None
    ref = entry[1].get(how)
    return ref() if ref is not None else None


def check_scalar(value: Any, verb: str) -> Any:
    """Accept a Python number or a 0-d array as a scalar factor; raise otherwise."""
    if isinstance(value, bool):
        raise TypeError(f"Cannot {verb} an operator by a boolean; pass a number such as `1.0`.")
    if isinstance(value, numbers.Number):
        return value
    if isinstance(value, (jax.Array,)) or hasattr(value, "shape"):
        if jnp.ndim(value) != 0:
            raise ValueError(
                f"Can only {verb} an operator by a scalar, got an array of shape {jnp.shape(value)}; "
                "for elementwise scaling compose with `lx.DiagonalLinearOperator(d)`."
            )
        value = jnp.asarray(value)
        if value.dtype == jnp.bool_:
            raise TypeError(
                f"Cannot {verb} an operator by a boolean; pass a number such as `1.0`."
            )
        return value
    raise TypeError(f"Cannot {verb} an operator by {type(value).__name__}; pass a scalar.")


def check_tags(tags: Any, in_structure: Any, out_structure: Any, name: str) -> frozenset:
    """Normalise tags and reject square-only tags on operators whose structures differ."""
    tags = as_tags(tags)
    bad = tags & SQUARE_ONLY_TAGS
    if bad and not _tree.same_shapes(in_structure, out_structure):
        raise ValueError(
            f"{name}: tags {sorted(map(repr, bad))} need the input and output structures to match, "
            f"but the input is {_tree.describe(in_structure)} and the output is "
            f"{_tree.describe(out_structure)}. Remove these tags for a non-square operator."
        )
    return tags
