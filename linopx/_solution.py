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


class LinearSolveError(eqx.EquinoxRuntimeError):
    """What a failed solve raises with `throw=True` (the default).

    Outside `jit` (an eager `lx.linear_solve`, or an eager `jax.grad` of one) it is raised as is,
    and its message is the `RESULTS` text, e.g. "The linear system is singular ...". Inside a
    `jax.jit` JAX raises its own `jax.errors.JaxRuntimeError` when the compiled program runs, and the
    `RESULTS` text is in its message. Nothing is written to stderr either way. A `RuntimeError`
    (through `equinox.EquinoxRuntimeError`, so code written for Lineax that catches that keeps
    working). With `throw=False` nothing is raised: read `Solution.result` instead.

    ```python
    try:
        x = lx.linear_solve(op, b).value
    except lx.LinearSolveError as err:
        print(err)    # The linear system is singular (or numerically so). ...
    ```
    """


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
