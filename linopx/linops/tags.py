"""Tags: static promises about an operator's structure, read at trace time.

A tag is a promise made by the user ("this matrix is symmetric"); linopx never checks it against the
values. Tags select solvers (`Cholesky` for a positive semidefinite operator, `Triangular` for a triangular
one) and survive arithmetic only where the property provably survives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


class _Tag:
    """A named, hashable marker. Compared by identity, printed by name."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


symmetric_tag = _Tag("symmetric_tag")
diagonal_tag = _Tag("diagonal_tag")
tridiagonal_tag = _Tag("tridiagonal_tag")
unit_diagonal_tag = _Tag("unit_diagonal_tag")
lower_triangular_tag = _Tag("lower_triangular_tag")
upper_triangular_tag = _Tag("upper_triangular_tag")
positive_semidefinite_tag = _Tag("positive_semidefinite_tag")
negative_semidefinite_tag = _Tag("negative_semidefinite_tag")
# Equal to its adjoint (conjugate transpose), possibly indefinite: what MINRES needs of a complex
# operator. (For real operators it is `symmetric_tag`; for complex ones `symmetric_tag` means
# `A = Aᵀ`, which is not Hermitian.)
hermitian_tag = _Tag("hermitian_tag")

ALL_TAGS = frozenset(
    {
        symmetric_tag,
        diagonal_tag,
        tridiagonal_tag,
        unit_diagonal_tag,
        lower_triangular_tag,
        upper_triangular_tag,
        positive_semidefinite_tag,
        negative_semidefinite_tag,
        hermitian_tag,
    }
)

# Tags that only make sense when the input and output structures coincide.
SQUARE_ONLY_TAGS = frozenset(
    {
        symmetric_tag,
        diagonal_tag,
        tridiagonal_tag,
        unit_diagonal_tag,
        lower_triangular_tag,
        upper_triangular_tag,
        positive_semidefinite_tag,
        negative_semidefinite_tag,
        hermitian_tag,
    }
)


def as_tags(tags: object) -> frozenset:
    """Normalise a tag, an iterable of tags, or `()` to a frozenset, rejecting unknown objects."""
    if isinstance(tags, _Tag):
        tags = (tags,)
    if not isinstance(tags, Iterable):
        raise TypeError(f"`tags` must be a tag or an iterable of tags, got {tags!r}.")
    out = frozenset(tags)
    for tag in out:
        if not isinstance(tag, _Tag):
            raise TypeError(
                f"{tag!r} is not a linopx tag; use e.g. `lx.symmetric_tag` or "
                "`lx.positive_semidefinite_tag`."
            )
    return out


transpose_tags_rules: list[Callable[[frozenset], _Tag | None]] = []
"""The rules `transpose_tags` applies, in Lineax's form (`lineax.transpose_tags_rules`): each is a
function of the frozenset of an operator's tags returning one tag for its transpose, or `None`. A
tag that no rule returns is dropped. Append a rule to teach `transpose_tags` more (it must return
linopx tags):

```python
lx.transpose_tags_rules.append(
    lambda tags: lx.symmetric_tag if lx.positive_semidefinite_tag in tags else None
)
```
"""


def _keep_rule(tag: _Tag) -> Callable[[frozenset], _Tag | None]:
    def rule(tags: frozenset) -> _Tag | None:
        return tag if tag in tags else None

    return rule


def _map_rule(source: _Tag, target: _Tag) -> Callable[[frozenset], _Tag | None]:
    def rule(tags: frozenset) -> _Tag | None:
        return target if source in tags else None

    return rule


# The transpose of a symmetric, diagonal, tridiagonal, unit-diagonal or semidefinite operator has
# the same property; lower and upper triangularity swap.
for _tag in (
    symmetric_tag,
    diagonal_tag,
    tridiagonal_tag,
    unit_diagonal_tag,
    positive_semidefinite_tag,
    negative_semidefinite_tag,
    hermitian_tag,  # Aᵀ = conj(A), Hermitian too
):
    transpose_tags_rules.append(_keep_rule(_tag))
transpose_tags_rules.append(_map_rule(lower_triangular_tag, upper_triangular_tag))
transpose_tags_rules.append(_map_rule(upper_triangular_tag, lower_triangular_tag))


def transpose_tags(tags: Iterable) -> frozenset:
    """The tags of the transpose of an operator carrying `tags`.

    Lower and upper triangularity swap; every other tag is kept (the transpose of a symmetric,
    diagonal, tridiagonal, unit-diagonal or semidefinite operator has the same property). These are
    the rules in `lx.transpose_tags_rules`, which this applies (each rule's tag, if any, is kept).
    """
    tags = as_tags(tags)
    out = [rule(tags) for rule in transpose_tags_rules]
    return as_tags(t for t in out if t is not None)
