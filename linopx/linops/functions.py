"""Operator functions, as `functools.singledispatch` so that users can register their own operators.

Predicates (`is_symmetric`, ...) read tags and types only, never values: they are decided at trace time.
Tags survive arithmetic only where the property provably survives.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _tree
from .base import AbstractLinearOperator, note_origin
from .composite import (
    AddLinearOperator,
    ComposedLinearOperator,
    DivLinearOperator,
    MulLinearOperator,
    NegLinearOperator,
    TaggedLinearOperator,
)
from .diagonal import DiagonalLinearOperator, IdentityLinearOperator, TridiagonalLinearOperator
from .function import FunctionLinearOperator, JacobianLinearOperator, matrix_from_mv
from .matrix import MatrixLinearOperator
from .pytree import PyTreeLinearOperator
from .tags import (
    diagonal_tag,
    hermitian_tag,
    lower_triangular_tag,
    negative_semidefinite_tag,
    positive_semidefinite_tag,
    symmetric_tag,
    tridiagonal_tag,
    unit_diagonal_tag,
    upper_triangular_tag,
)

# Operators whose properties are read from their `tags` field alone. `register_tagged` adds more.
_TAGGED_TYPES: list[type] = [
    MatrixLinearOperator,
    FunctionLinearOperator,
    JacobianLinearOperator,
    PyTreeLinearOperator,
    TaggedLinearOperator,
]


def _unregistered(name: str, operator: Any):
    if not isinstance(operator, AbstractLinearOperator):
        raise TypeError(
            f"`lx.{name}` takes a linopx operator, got {type(operator).__name__}; wrap arrays in "
            "`lx.MatrixLinearOperator`."
        )
    if type(operator).__module__.startswith("linopx."):
        raise NotImplementedError(
            f"`lx.{name}` has no rule for {type(operator).__name__}: this is a bug in linopx, "
            "please report it."
        )
    raise NotImplementedError(
        f"`lx.{name}` does not know the operator type {type(operator).__name__}. Register a rule with "
        f"`@lx.{name}.register({type(operator).__name__})`."
    )


def _is_square(operator: AbstractLinearOperator) -> bool:
    return _tree.same_shapes(operator.in_structure(), operator.out_structure())


def _is_real(operator: AbstractLinearOperator) -> bool:
    return not (
        _tree.is_complex_structure(operator.in_structure())
        or _tree.is_complex_structure(operator.out_structure())
    )


def _identity_square(operator: Any) -> bool:
    return isinstance(operator, IdentityLinearOperator) and (
        operator.input_frozen == operator.output_frozen or _one_by_one(operator)
    )


def _one_by_one(operator: AbstractLinearOperator) -> bool:
    """A 1 x 1 operator (one scalar in, one scalar out, whatever the structures' shapes): it is
    diagonal, hence tridiagonal, whatever its tags, as Lineax says too. (Symmetry and
    triangularity stay tag-driven, as in Lineax.)"""
    return operator.in_size() == 1 and operator.out_size() == 1


def _tagged_inner(operator: Any) -> AbstractLinearOperator | None:
    return operator.operator if isinstance(operator, TaggedLinearOperator) else None


# ---------------------------------------------------------------------------------------------
# Predicates


def _make_predicate(name: str, tag: Any, doc: str):
    @functools.singledispatch
    def predicate(operator: Any) -> bool:
        _unregistered(name, operator)

    predicate.__name__ = name
    predicate.__qualname__ = name
    predicate.__doc__ = doc
    return predicate


is_symmetric = _make_predicate(
    "is_symmetric",
    symmetric_tag,
    """Whether `operator` is known (from tags and types) to equal its plain transpose.

A diagonal operator is symmetric; a real positive or negative semidefinite tag implies symmetry
(for complex operators those tags mean Hermitian, which is not symmetry).""",
)
is_diagonal = _make_predicate("is_diagonal", diagonal_tag, "Whether `operator` is known to be diagonal.")
is_tridiagonal = _make_predicate(
    "is_tridiagonal", tridiagonal_tag, "Whether `operator` is known to be tridiagonal (diagonal counts)."
)
is_lower_triangular = _make_predicate(
    "is_lower_triangular", lower_triangular_tag, "Whether `operator` is known to be lower triangular."
)
is_upper_triangular = _make_predicate(
    "is_upper_triangular", upper_triangular_tag, "Whether `operator` is known to be upper triangular."
)
is_positive_semidefinite = _make_predicate(
    "is_positive_semidefinite",
    positive_semidefinite_tag,
    "Whether `operator` is known to be positive semidefinite (Hermitian PSD for complex operators).",
)
is_negative_semidefinite = _make_predicate(
    "is_negative_semidefinite",
    negative_semidefinite_tag,
    "Whether `operator` is known to be negative semidefinite (Hermitian NSD for complex operators).",
)
has_unit_diagonal = _make_predicate(
    "has_unit_diagonal", unit_diagonal_tag, "Whether `operator` is known to have ones on its diagonal."
)


def _tags(operator: Any) -> frozenset:
    return operator.tags


def register_tagged(cls: type) -> type:
    """Register a tag-carrying operator class (with a static `tags` field) with every predicate.
    Used by linopx's own operators; available to users with operators of the same kind."""
    for pred, rule in _TAG_RULES.items():
        pred.register(cls)(rule)
    return cls


def _tag_rule_symmetric(op):
    t = _tags(op)
    inner = _tagged_inner(op)
    if symmetric_tag in t or diagonal_tag in t:
        return True
    if _is_real(op) and (
        positive_semidefinite_tag in t or negative_semidefinite_tag in t or hermitian_tag in t
    ):
        return True
    return inner is not None and is_symmetric(inner)


def _simple_tag_rule(tag, pred_name, implied_by=(), one_by_one=False):
    """`pred_name` holds if `op` carries `tag` or one of `implied_by`, or (with `one_by_one`) if it
    is 1 x 1, or if it wraps an operator for which it holds."""

    def rule(op):
        t = _tags(op)
        if tag in t or any(x in t for x in implied_by) or (one_by_one and _one_by_one(op)):
            return True
        inner = _tagged_inner(op)
        return inner is not None and globals()[pred_name](inner)

    return rule


_TAG_RULES = {
    is_symmetric: _tag_rule_symmetric,
    is_diagonal: _simple_tag_rule(diagonal_tag, "is_diagonal", one_by_one=True),
    is_tridiagonal: _simple_tag_rule(
        tridiagonal_tag, "is_tridiagonal", (diagonal_tag,), one_by_one=True
    ),
    is_lower_triangular: _simple_tag_rule(lower_triangular_tag, "is_lower_triangular", (diagonal_tag,)),
    is_upper_triangular: _simple_tag_rule(upper_triangular_tag, "is_upper_triangular", (diagonal_tag,)),
    is_positive_semidefinite: _simple_tag_rule(positive_semidefinite_tag, "is_positive_semidefinite"),
    is_negative_semidefinite: _simple_tag_rule(negative_semidefinite_tag, "is_negative_semidefinite"),
    has_unit_diagonal: _simple_tag_rule(unit_diagonal_tag, "has_unit_diagonal"),
}

for _cls in _TAGGED_TYPES:
    register_tagged(_cls)


# Diagonal, tridiagonal and identity operators: known by type.
@is_symmetric.register(DiagonalLinearOperator)
@is_diagonal.register(DiagonalLinearOperator)
@is_tridiagonal.register(DiagonalLinearOperator)
@is_lower_triangular.register(DiagonalLinearOperator)
@is_upper_triangular.register(DiagonalLinearOperator)
def _(op):
    return True


@is_diagonal.register(TridiagonalLinearOperator)
def _(op):
    # Of size 1 it is diagonal; larger ones depend on the values, which predicates never read.
    return _one_by_one(op)


@is_positive_semidefinite.register(DiagonalLinearOperator)
@is_negative_semidefinite.register(DiagonalLinearOperator)
@has_unit_diagonal.register(DiagonalLinearOperator)
@is_symmetric.register(TridiagonalLinearOperator)
@is_lower_triangular.register(TridiagonalLinearOperator)
@is_upper_triangular.register(TridiagonalLinearOperator)
@is_positive_semidefinite.register(TridiagonalLinearOperator)
@is_negative_semidefinite.register(TridiagonalLinearOperator)
@has_unit_diagonal.register(TridiagonalLinearOperator)
def _(op):
    # Depends on the values, which predicates never read.
    return False


@is_tridiagonal.register(TridiagonalLinearOperator)
def _(op):
    return True


@is_symmetric.register(IdentityLinearOperator)
@is_diagonal.register(IdentityLinearOperator)
@is_tridiagonal.register(IdentityLinearOperator)
@is_lower_triangular.register(IdentityLinearOperator)
@is_upper_triangular.register(IdentityLinearOperator)
@is_positive_semidefinite.register(IdentityLinearOperator)
@has_unit_diagonal.register(IdentityLinearOperator)
def _(op):
    return _identity_square(op)


@is_negative_semidefinite.register(IdentityLinearOperator)
def _(op):
    return False


# Sums keep a property only if both terms have it (unit diagonal never survives a sum).
for _pred in (
    is_symmetric,
    is_diagonal,
    is_tridiagonal,
    is_lower_triangular,
    is_upper_triangular,
    is_positive_semidefinite,
    is_negative_semidefinite,
):
    _pred.register(AddLinearOperator)(
        functools.partial(lambda p, op: p(op.operator1) and p(op.operator2), _pred)
    )


@has_unit_diagonal.register(AddLinearOperator)
def _(op):
    return False


# Scaling keeps structure; definiteness follows the sign when it is a Python number.
for _pred in (is_symmetric, is_diagonal, is_tridiagonal, is_lower_triangular, is_upper_triangular):
    for _cls in (MulLinearOperator, DivLinearOperator, NegLinearOperator):
        _pred.register(_cls)(functools.partial(lambda p, op: p(op.operator), _pred))


def _scaled_definite(op, same, flipped, allow_zero):
    if op.sign is None:
        return False
    if op.sign == 0:
        return allow_zero
    return same(op.operator) if op.sign > 0 else flipped(op.operator)


@is_positive_semidefinite.register(MulLinearOperator)
def _(op):
    return _scaled_definite(op, is_positive_semidefinite, is_negative_semidefinite, True)


@is_negative_semidefinite.register(MulLinearOperator)
def _(op):
    return _scaled_definite(op, is_negative_semidefinite, is_positive_semidefinite, True)


@is_positive_semidefinite.register(DivLinearOperator)
def _(op):
    return _scaled_definite(op, is_positive_semidefinite, is_negative_semidefinite, False)


@is_negative_semidefinite.register(DivLinearOperator)
def _(op):
    return _scaled_definite(op, is_negative_semidefinite, is_positive_semidefinite, False)


@is_positive_semidefinite.register(NegLinearOperator)
def _(op):
    return is_negative_semidefinite(op.operator)


@is_negative_semidefinite.register(NegLinearOperator)
def _(op):
    return is_positive_semidefinite(op.operator)


@has_unit_diagonal.register(MulLinearOperator)
@has_unit_diagonal.register(DivLinearOperator)
@has_unit_diagonal.register(NegLinearOperator)
def _(op):
    return False


# Compositions: only what is provable from the factors' structure.
@is_symmetric.register(ComposedLinearOperator)
def _(op):
    a, b = op.operator1, op.operator2
    if op.gram and _is_real(op):  # Aᵀ A
        return True
    if _identity_square(a):
        return is_symmetric(b)
    if _identity_square(b):
        return is_symmetric(a)
    return is_diagonal(a) and is_diagonal(b)


@is_diagonal.register(ComposedLinearOperator)
def _(op):
    return _one_by_one(op) or (is_diagonal(op.operator1) and is_diagonal(op.operator2))


@is_tridiagonal.register(ComposedLinearOperator)
def _(op):
    a, b = op.operator1, op.operator2
    return (
        _one_by_one(op)
        or (is_diagonal(a) and is_tridiagonal(b))
        or (is_tridiagonal(a) and is_diagonal(b))
    )


@is_lower_triangular.register(ComposedLinearOperator)
def _(op):
    return is_lower_triangular(op.operator1) and is_lower_triangular(op.operator2)


@is_upper_triangular.register(ComposedLinearOperator)
def _(op):
    return is_upper_triangular(op.operator1) and is_upper_triangular(op.operator2)


def _composed_definite(op, pred):
    a, b = op.operator1, op.operator2
    if _identity_square(a):
        return pred(b)
    if _identity_square(b):
        return pred(a)
    return False


@is_positive_semidefinite.register(ComposedLinearOperator)
def _(op):
    # A Gram product Aᴴ A (or A Aᴴ) is positive semidefinite whatever A is.
    return op.gram or _composed_definite(op, is_positive_semidefinite)


@is_negative_semidefinite.register(ComposedLinearOperator)
def _(op):
    return _composed_definite(op, is_negative_semidefinite)


@has_unit_diagonal.register(ComposedLinearOperator)
def _(op):
    a, b = op.operator1, op.operator2
    if not (has_unit_diagonal(a) and has_unit_diagonal(b)):
        return False
    both_lower = is_lower_triangular(a) and is_lower_triangular(b)
    both_upper = is_upper_triangular(a) and is_upper_triangular(b)
    return both_lower or both_upper


# ---------------------------------------------------------------------------------------------
# materialise / linearise


def _dense_like(operator: AbstractLinearOperator, tags: frozenset) -> AbstractLinearOperator:
    """A dense operator with the same structures as `operator`."""
    in_s, out_s = operator.in_structure(), operator.out_structure()
    matrix = operator.as_matrix()
    in_leaves = jax.tree_util.tree_leaves(in_s)
    out_leaves = jax.tree_util.tree_leaves(out_s)
    flat = (
        len(in_leaves) == 1
        and len(out_leaves) == 1
        and jax.tree_util.tree_structure(in_s) == jax.tree_util.tree_structure(0)
        and jax.tree_util.tree_structure(out_s) == jax.tree_util.tree_structure(0)
        and len(in_leaves[0].shape) == 1
        and len(out_leaves[0].shape) == 1
    )
    if flat:
        return MatrixLinearOperator(matrix, tags)
    # Split the matrix into the pytree-of-pytrees layout of PyTreeLinearOperator.
    out_treedef = jax.tree_util.tree_structure(out_s)
    in_treedef = jax.tree_util.tree_structure(in_s)
    rows, r = [], 0
    for so in out_leaves:
        m = math.prod(so.shape)
        cols, c = [], 0
        for si in in_leaves:
            n = math.prod(si.shape)
            cols.append(matrix[r : r + m, c : c + n].reshape(tuple(so.shape) + tuple(si.shape)))
            c += n
        rows.append(jax.tree_util.tree_unflatten(in_treedef, cols))
        r += m
    return PyTreeLinearOperator(jax.tree_util.tree_unflatten(out_treedef, rows), out_s, tags)


@functools.singledispatch
def materialise(operator: Any) -> AbstractLinearOperator:
    """Return an equivalent operator whose action is stored, not recomputed: matrix-free operators
    (`FunctionLinearOperator`, `JacobianLinearOperator`) become dense; structured operators
    (diagonal, tridiagonal, sparse) stay as they are; composites materialise their parts."""
    _unregistered("materialise", operator)


@functools.singledispatch
def linearise(operator: Any) -> AbstractLinearOperator:
    """Return an equivalent operator whose `mv` no longer recomputes a primal function: a
    `JacobianLinearOperator` becomes a `FunctionLinearOperator` holding the linearisation
    (`jax.linearize`), so repeated `mv`s (as in iterative solvers) cost one JVP each, no more."""
    _unregistered("linearise", operator)


for _cls in (
    MatrixLinearOperator,
    PyTreeLinearOperator,
    DiagonalLinearOperator,
    TridiagonalLinearOperator,
    IdentityLinearOperator,
):
    materialise.register(_cls)(lambda op: op)
    linearise.register(_cls)(lambda op: op)

linearise.register(FunctionLinearOperator)(lambda op: op)


@materialise.register(FunctionLinearOperator)
@materialise.register(JacobianLinearOperator)
def _(op):
    return _dense_like(op, op.tags)


@linearise.register(JacobianLinearOperator)
def _(op):
    if op.jac == "bwd":
        _, vjp = jax.vjp(op._f, op.x)
        transposed = jax.linear_transpose(lambda w: vjp(w)[0], op.out_structure())
        return FunctionLinearOperator(lambda v: transposed(v)[0], op.in_structure(), op.tags)
    _, jvp_fn = jax.linearize(op._f, op.x)
    return FunctionLinearOperator(jvp_fn, op.in_structure(), op.tags)


def _rebuild(fn):
    """Register `fn` on composites: apply it to the children and rebuild."""

    @fn.register(TaggedLinearOperator)
    def _(op):
        return TaggedLinearOperator(fn(op.operator), op.tags)

    @fn.register(AddLinearOperator)
    def _(op):
        return AddLinearOperator(fn(op.operator1), fn(op.operator2))

    # `tree_at` rather than a constructor keeps the static `sign` of a scaling: under `jax.jit` a
    # Python scalar is a traced leaf whose sign could no longer be read off it.
    @fn.register(MulLinearOperator)
    @fn.register(DivLinearOperator)
    def _(op):
        return eqx.tree_at(lambda o: o.operator, op, fn(op.operator))

    @fn.register(NegLinearOperator)
    def _(op):
        return NegLinearOperator(fn(op.operator))

    @fn.register(ComposedLinearOperator)
    def _(op):
        return ComposedLinearOperator(fn(op.operator1), fn(op.operator2))


_rebuild(materialise)
_rebuild(linearise)


# ---------------------------------------------------------------------------------------------
# diagonal / tridiagonal


def _probe_diagonal(operator: AbstractLinearOperator) -> jax.Array:
    """The diagonal of a matrix-free operator by probing one basis vector at a time (in chunks),
    so memory stays O(n * chunk) rather than O(n²)."""
    in_s, out_s = operator.in_structure(), operator.out_structure()
    n = min(_tree.structure_size(in_s), _tree.structure_size(out_s))
    n_in = _tree.structure_size(in_s)
    dtype = _tree.structure_dtype(in_s)

    def one(i):
        e = jnp.zeros(n_in, dtype).at[i].set(1)
        return _tree.ravel(operator.mv(_tree.unravel(e, in_s)))[i]

    return jax.lax.map(one, jnp.arange(n), batch_size=min(n, 64))


@functools.singledispatch
def diagonal(operator: Any) -> jax.Array:
    """The main diagonal of `operator` as a flat vector, computed without forming the dense matrix
    where the operator's type allows (one `mv` for a diagonal-tagged matrix-free operator, three for
    a tridiagonal-tagged one, chunked probing otherwise)."""
    _unregistered("diagonal", operator)


@diagonal.register(MatrixLinearOperator)
def _(op):
    # Gather the entries directly: `jnp.diagonal` builds an (m, n) mask for some backends, which
    # shows up in every jaxpr (and in traced memory estimates) even where it is optimised away.
    idx = jnp.arange(min(op.matrix.shape))
    return op.matrix[idx, idx]


@diagonal.register(PyTreeLinearOperator)
def _(op):
    return jnp.diagonal(op.as_matrix())


@diagonal.register(DiagonalLinearOperator)
def _(op):
    return _tree.ravel(op.diagonal)


@diagonal.register(TridiagonalLinearOperator)
def _(op):
    return op.diagonal


@diagonal.register(IdentityLinearOperator)
def _(op):
    dtype = jnp.result_type(
        _tree.structure_dtype(op.in_structure()), _tree.structure_dtype(op.out_structure())
    )
    return jnp.ones(min(op.in_size(), op.out_size()), dtype)


@diagonal.register(FunctionLinearOperator)
@diagonal.register(JacobianLinearOperator)
def _(op):
    if is_diagonal(op):
        ones = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), op.in_structure())
        return _tree.ravel(op.mv(ones))
    if is_tridiagonal(op):
        return tridiagonal(op)[0]
    return _probe_diagonal(op)


@diagonal.register(TaggedLinearOperator)
def _(op):
    if is_diagonal(op) and not is_diagonal(op.operator):
        ones = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), op.in_structure())
        return _tree.ravel(op.mv(ones))
    return diagonal(op.operator)


@diagonal.register(AddLinearOperator)
def _(op):
    return diagonal(op.operator1) + diagonal(op.operator2)


@diagonal.register(MulLinearOperator)
def _(op):
    return diagonal(op.operator) * op.scalar


@diagonal.register(DivLinearOperator)
def _(op):
    return diagonal(op.operator) / op.scalar


@diagonal.register(NegLinearOperator)
def _(op):
    return -diagonal(op.operator)


@diagonal.register(ComposedLinearOperator)
def _(op):
    a, b = op.operator1, op.operator2
    square = _is_square(a) and _is_square(b)
    if square and is_diagonal(a):
        return diagonal(a) * diagonal(b)
    if square and is_diagonal(b):
        return diagonal(a) * diagonal(b)
    return _probe_diagonal(op)


def _tridiagonal_by_probing(operator: AbstractLinearOperator):
    """Exact bands of a tridiagonal operator from three `mv`s (columns coloured modulo 3)."""
    in_s = operator.in_structure()
    n = _tree.structure_size(in_s)
    dtype = _tree.structure_dtype(in_s)
    idx = jnp.arange(n)
    ys = jnp.stack(
        [_tree.ravel(operator.mv(_tree.unravel((idx % 3 == c).astype(dtype), in_s))) for c in range(3)]
    )
    d = ys[idx % 3, idx]
    j = idx[:-1]
    lower = ys[j % 3, j + 1]
    upper = ys[(j + 1) % 3, j]
    return d, lower, upper


def _tridiagonal_from_matrix(matrix: jax.Array):
    return jnp.diagonal(matrix), jnp.diagonal(matrix, offset=-1), jnp.diagonal(matrix, offset=1)


@functools.singledispatch
def tridiagonal(operator: Any):
    """The three bands `(diagonal, lower_diagonal, upper_diagonal)` of a square operator, where
    `lower_diagonal[i] = A[i + 1, i]` and `upper_diagonal[i] = A[i, i + 1]`. Entries outside the
    bands are ignored. A matrix-free operator tagged tridiagonal costs three `mv`s."""
    _unregistered("tridiagonal", operator)


def _require_square(op, name):
    if not _is_square(op):
        raise ValueError(f"`lx.{name}` needs a square operator.")


@tridiagonal.register(MatrixLinearOperator)
@tridiagonal.register(PyTreeLinearOperator)
def _(op):
    _require_square(op, "tridiagonal")
    return _tridiagonal_from_matrix(op.as_matrix())


@tridiagonal.register(TridiagonalLinearOperator)
def _(op):
    return op.diagonal, op.lower_diagonal, op.upper_diagonal


@tridiagonal.register(DiagonalLinearOperator)
@tridiagonal.register(IdentityLinearOperator)
def _(op):
    _require_square(op, "tridiagonal")
    d = diagonal(op)
    z = jnp.zeros(d.shape[0] - 1, d.dtype)
    return d, z, z


@tridiagonal.register(FunctionLinearOperator)
@tridiagonal.register(JacobianLinearOperator)
@tridiagonal.register(ComposedLinearOperator)
def _(op):
    _require_square(op, "tridiagonal")
    if is_tridiagonal(op):
        return _tridiagonal_by_probing(op)
    return _tridiagonal_from_matrix(op.as_matrix())


@tridiagonal.register(TaggedLinearOperator)
def _(op):
    if is_tridiagonal(op) and not is_tridiagonal(op.operator):
        return _tridiagonal_by_probing(op)
    return tridiagonal(op.operator)


@tridiagonal.register(AddLinearOperator)
def _(op):
    a, b = tridiagonal(op.operator1), tridiagonal(op.operator2)
    return tuple(x + y for x, y in zip(a, b))


@tridiagonal.register(MulLinearOperator)
def _(op):
    return tuple(x * op.scalar for x in tridiagonal(op.operator))


@tridiagonal.register(DivLinearOperator)
def _(op):
    return tuple(x / op.scalar for x in tridiagonal(op.operator))


@tridiagonal.register(NegLinearOperator)
def _(op):
    return tuple(-x for x in tridiagonal(op.operator))


# ---------------------------------------------------------------------------------------------
# conj


@functools.singledispatch
def conj(operator: Any) -> AbstractLinearOperator:
    """The elementwise complex conjugate of `operator` (not the adjoint: combine with `.T` for that).
    For real operators it returns `operator` itself."""
    _unregistered("conj", operator)


@conj.register(MatrixLinearOperator)
def _(op):
    return MatrixLinearOperator(jnp.conj(op.matrix), op.tags)


@conj.register(PyTreeLinearOperator)
def _(op):
    return PyTreeLinearOperator(
        jax.tree_util.tree_map(jnp.conj, op.pytree), op.out_structure(), op.tags
    )


@conj.register(DiagonalLinearOperator)
def _(op):
    return DiagonalLinearOperator(jax.tree_util.tree_map(jnp.conj, op.diagonal))


@conj.register(TridiagonalLinearOperator)
def _(op):
    return TridiagonalLinearOperator(
        jnp.conj(op.diagonal), jnp.conj(op.lower_diagonal), jnp.conj(op.upper_diagonal)
    )


@conj.register(IdentityLinearOperator)
def _(op):
    return op


@conj.register(FunctionLinearOperator)
@conj.register(JacobianLinearOperator)
def _(op):
    if _is_real(op):
        return op
    fn = op.mv
    return FunctionLinearOperator(
        lambda v: _tree.tree_conj(fn(_tree.tree_conj(v))), op.in_structure(), op.tags
    )


@conj.register(TaggedLinearOperator)
def _(op):
    return TaggedLinearOperator(conj(op.operator), op.tags)


@conj.register(AddLinearOperator)
def _(op):
    return AddLinearOperator(conj(op.operator1), conj(op.operator2))


@conj.register(MulLinearOperator)
@conj.register(DivLinearOperator)
def _(op):
    # Keeps the static `sign` (see `_rebuild`); conjugation does not change a real scalar's sign,
    # and a complex scalar has none.
    return eqx.tree_at(
        lambda o: (o.operator, o.scalar), op, (conj(op.operator), _conj_scalar(op.scalar))
    )


@conj.register(NegLinearOperator)
def _(op):
    return NegLinearOperator(conj(op.operator))


@conj.register(ComposedLinearOperator)
def _(op):
    return ComposedLinearOperator(conj(op.operator1), conj(op.operator2), gram=op.gram)


def _note_conj(dispatch):
    """`conj` that notes on its result which operator it conjugates (see `base.note_origin`), so
    that `lx.conj(A.T) @ A` is recognised as a Gram product; registration passes through."""

    @functools.wraps(dispatch)
    def conj(operator: Any) -> AbstractLinearOperator:
        out = dispatch(operator)
        note_origin(out, "conj", operator)
        return out

    conj.register = dispatch.register
    conj.dispatch = dispatch.dispatch
    conj.registry = dispatch.registry
    return conj


conj = _note_conj(conj)


def is_hermitian(operator: Any) -> bool:
    """Whether `operator` is known to equal its adjoint (conjugate transpose) `Aᴴ`: tagged
    `lx.hermitian_tag`; or positive or negative semidefinite (for complex operators those tags mean
    Hermitian); or real and symmetric. Sums and negations of Hermitian operators, and their
    scalings by real Python numbers, are Hermitian. This is what MINRES needs (it takes indefinite
    operators); for a complex operator, `lx.symmetric_tag` means `A = Aᵀ`, which is not Hermitian.

    ```python
    H = lx.MatrixLinearOperator(h, lx.hermitian_tag)   # complex Hermitian, indefinite
    lx.linear_solve(H, b, lx.MINRES(rtol=1e-8, atol=1e-8))
    ```
    """
    if not isinstance(operator, AbstractLinearOperator):
        _unregistered("is_hermitian", operator)
    if is_positive_semidefinite(operator) or is_negative_semidefinite(operator):
        return True
    if _is_real(operator) and is_symmetric(operator):
        return True
    if hermitian_tag in getattr(operator, "tags", frozenset()):
        return True
    if isinstance(operator, TaggedLinearOperator | NegLinearOperator):
        return is_hermitian(operator.operator)
    if isinstance(operator, AddLinearOperator):
        return is_hermitian(operator.operator1) and is_hermitian(operator.operator2)
    if isinstance(operator, MulLinearOperator | DivLinearOperator):
        return operator.sign is not None and is_hermitian(operator.operator)
    if isinstance(operator, IdentityLinearOperator):
        return _identity_square(operator)
    return False


def _conj_scalar(s):
    if isinstance(s, complex):
        return s.conjugate()
    if isinstance(s, (int, float)):
        return s
    return jnp.conj(s)


__all__ = [
    "conj",
    "diagonal",
    "has_unit_diagonal",
    "is_diagonal",
    "is_hermitian",
    "is_lower_triangular",
    "is_negative_semidefinite",
    "is_positive_semidefinite",
    "is_symmetric",
    "is_tridiagonal",
    "is_upper_triangular",
    "linearise",
    "materialise",
    "matrix_from_mv",
    "register_tagged",
]
