"""`RESULTS` and `Solution`: what `linear_solve` hands back."""

from __future__ import annotations

from typing import Any

import equinox as eqx
from jaxtyping import PyTree


class RESULTS(eqx.Enumeration):
    """How a solve ended. Compare with `==`, e.g. `sol.result == lx.RESULTS.successful`
    (works inside `jit` and `vmap`, where it gives a boolean array)."""

    successful = ""
    max_steps_reached = (
        "The iterative solver did not reach its tolerance within `max_steps` steps. Raise "
        "`max_steps`, loosen `rtol`/`atol`, or pass a preconditioner."
    )
    singular = (
        "The linear system is singular (or numerically so). For a rank-deficient or non-square "
        "system use `lx.AutoLinearSolver(well_posed=False)`, `lx.SVD()` or `lx.QR()`."
    )
    breakdown = (
        "The iterative solver broke down (a division by zero inside the method). Try another "
        "method, e.g. `lx.GMRES`, or a preconditioner."
    )
    stagnation = (
        "The iterative solver stagnated: its residual stopped decreasing before the tolerance "
        "was met."
    )
    nonfinite_input = "The operator or the right-hand side contains NaN or infinity."


class Solution(eqx.Module):
    """The result of `lx.linear_solve`.

    **Fields:**

    - `value`: the pseudoinverse solution `A⁺ b`, with the structure of the operator's input.
    - `result`: a `RESULTS` value saying whether the solve succeeded.
    - `stats`: a dict of solver statistics (for iterative solvers `num_steps` and residual norms).
    - `state`: the solver state (e.g. a factorization), reusable through `linear_solve(..., state=...)`.
    """

    value: PyTree
    result: RESULTS
    stats: dict[str, Any]
    state: PyTree
