"""Tags: static promises about an operator's structure, read at trace time.

A tag is a promise made by the user ("this matrix is symmetric"); linopx never checks it against the
values. Tags select solvers (`Cholesky` for a positive semidefinite operator, `Triangular` for a triangular
one) and survive arithmetic only where the property provably survives.
"""

from __future__ import annotations

from collections.abc import Iterable


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


def transpose_tags(tags: Iterable) -> frozenset:
    """The tags of the transpose of an operator carrying `tags`.

    Lower and upper triangularity swap; every other tag is kept (the transpose of a symmetric,
    diagonal, tridiagonal, unit-diagonal or semidefinite operator has the same property).
    """
    tags = as_tags(tags)
    out = set(tags) - {lower_triangular_tag, upper_triangular_tag}
    if lower_triangular_tag in tags:
        out.add(upper_triangular_tag)
    if upper_triangular_tag in tags:
        out.add(lower_triangular_tag)
    return frozenset(out)
