"""`linopx.internal`: the helpers that Lineax exports as `lineax.internal`, for libraries written
against Lineax (Optimistix and Diffrax import the norms and `default_floating_dtype` from there).

- Norms of pytrees: `max_norm`, `rms_norm`, `two_norm`, `sum_squares`, and the inner product
  `tree_dot` (conjugating its first argument).
- Dtypes: `default_floating_dtype()`, `complex_to_real_dtype(dtype)`.
- `linear_solve_p`: the primitive that carries every solve (to recognise solves in a jaxpr; its
  operands are linopx's, not Lineax's, so bind it only through `lx.linear_solve`).
- Packed structures, for solvers written in Lineax's style: `pack_structures(operator)` gives a
  static `PackedStructures` to keep in a solver state, `ravel_vector` flattens a right-hand side with
  it, `unravel_solution` unflattens a solution, `transpose_packed_structures` swaps the two sides.

To run code written for Lineax on linopx, alias both modules before it imports Lineax:

```python
import sys, linopx
sys.modules["lineax"] = linopx
sys.modules["lineax.internal"] = linopx.internal
```
"""

# Absolute imports on purpose: with only `sys.modules["lineax"] = linopx` set, `import
# lineax.internal` finds this file through linopx's `__path__` and runs it a second time as a
# module named "lineax.internal", whose relative imports would then load a second copy of every
# linopx module (a second `linear_solve_p`, a second `RESULTS`). Absolute imports give that copy
# the very objects `linopx` holds.
from linopx._norm import (
    complex_to_real_dtype,
    default_floating_dtype,
    max_norm,
    rms_norm,
    sum_squares,
    tree_dot,
    two_norm,
)
from linopx.autodiff.primitive import linear_solve_p
from linopx.solvers._packed import (
    PackedStructures,
    pack_structures,
    ravel_vector,
    transpose_packed_structures,
    unravel_solution,
)

__all__ = [
    "PackedStructures",
    "complex_to_real_dtype",
    "default_floating_dtype",
    "linear_solve_p",
    "max_norm",
    "pack_structures",
    "ravel_vector",
    "rms_norm",
    "sum_squares",
    "transpose_packed_structures",
    "tree_dot",
    "two_norm",
    "unravel_solution",
]
