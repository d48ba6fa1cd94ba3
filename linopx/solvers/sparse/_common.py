"""Pieces shared by the host-side backends."""

from __future__ import annotations

import numpy as np


class _Singular:
    """Stands in for the factorization of a matrix found singular (cached like a factor, so a
    gradient of a failed solve does not retry the factorization)."""

    def __repr__(self) -> str:
        return "SINGULAR"


SINGULAR = _Singular()


def condition_check(a, factor, dtype) -> bool:
    """Whether the factorization is usable: `False` if `A` is numerically singular.

    A lower bound on the condition number costs one extra solve: with `e` a fixed vector of random
    signs, `κ∞(A) ≥ ‖A‖∞ ‖A⁻¹e‖∞` (as `‖e‖∞ = 1`). A random `e` has a component along the
    near-null direction of a numerically singular matrix with probability one, and rounding leaves
    that matrix's smallest pivot at a few `eps · ‖A‖`, so the bound comes out near `1 / eps`. We flag
    `κ ≥ 1 / (32 eps)`, matching the dense solvers' pivot-ratio threshold of `32 eps` (see
    `linopx.solvers._misc.pivot_result`). A heuristic, like theirs: it never flags a matrix whose true
    condition number is below the threshold, and exact singularity is caught by the factorizer itself.
    The extra solve costs a few percent of a factorization (a triangular solve pair against an LU)."""
    n = a.shape[0]
    if n == 0:
        return True
    real = np.finfo(dtype).dtype
    e = np.random.default_rng(20240521).choice(np.array([-1.0, 1.0], real), n).astype(dtype)
    x = factor.solve(e, False)
    if not np.all(np.isfinite(x)):
        return False
    norm_a = float(np.max(np.asarray(abs(a).sum(axis=1)))) if a.nnz else 0.0
    bound = norm_a * float(np.max(np.abs(x)))
    return bool(np.isfinite(bound) and bound < 1.0 / (32.0 * np.finfo(real).eps))
