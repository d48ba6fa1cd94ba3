"""linopx: differentiable linear operators and linear solvers for JAX.

```python
import linopx as lx
sol = lx.linear_solve(lx.MatrixLinearOperator(A), b)      # A⁺ b, differentiable
```
"""

import importlib.metadata

from . import internal as internal
from ._caches import cache_info as cache_info, clear_caches as clear_caches
from ._native import native_info as native_info
from ._solution import (
    RESULTS as RESULTS,
    LinearSolveError as LinearSolveError,
    Solution as Solution,
)
from ._slogdet import (
    Hutchinson as Hutchinson,
    StochasticLanczos as StochasticLanczos,
    slogdet as slogdet,
)
from ._solve import invert as invert, linear_solve as linear_solve
from .linops import (
    AbstractLinearOperator as AbstractLinearOperator,
    AddLinearOperator as AddLinearOperator,
    ComposedLinearOperator as ComposedLinearOperator,
    DiagonalLinearOperator as DiagonalLinearOperator,
    DivLinearOperator as DivLinearOperator,
    FunctionLinearOperator as FunctionLinearOperator,
    IdentityLinearOperator as IdentityLinearOperator,
    JacobianLinearOperator as JacobianLinearOperator,
    MatrixLinearOperator as MatrixLinearOperator,
    MulLinearOperator as MulLinearOperator,
    NegLinearOperator as NegLinearOperator,
    PyTreeLinearOperator as PyTreeLinearOperator,
    SparseCOOLinearOperator as SparseCOOLinearOperator,
    TaggedLinearOperator as TaggedLinearOperator,
    TangentLinearOperator as TangentLinearOperator,
    TridiagonalLinearOperator as TridiagonalLinearOperator,
    conj as conj,
    diagonal as diagonal,
    diagonal_tag as diagonal_tag,
    hermitian_tag as hermitian_tag,
    has_unit_diagonal as has_unit_diagonal,
    is_diagonal as is_diagonal,
    is_hermitian as is_hermitian,
    is_lower_triangular as is_lower_triangular,
    is_negative_semidefinite as is_negative_semidefinite,
    is_positive_semidefinite as is_positive_semidefinite,
    is_symmetric as is_symmetric,
    is_tridiagonal as is_tridiagonal,
    is_upper_triangular as is_upper_triangular,
    linearise as linearise,
    lower_triangular_tag as lower_triangular_tag,
    materialise as materialise,
    negative_semidefinite_tag as negative_semidefinite_tag,
    positive_semidefinite_tag as positive_semidefinite_tag,
    symmetric_tag as symmetric_tag,
    transpose_tags as transpose_tags,
    transpose_tags_rules as transpose_tags_rules,
    tridiagonal as tridiagonal,
    tridiagonal_tag as tridiagonal_tag,
    unit_diagonal_tag as unit_diagonal_tag,
    upper_triangular_tag as upper_triangular_tag,
)
from .solvers import (
    AbstractLinearSolver as AbstractLinearSolver,
    AutoLinearSolver as AutoLinearSolver,
    BiCGStab as BiCGStab,
    CG as CG,
    Cholesky as Cholesky,
    Diagonal as Diagonal,
    GMRES as GMRES,
    LSMR as LSMR,
    LSQR as LSQR,
    LU as LU,
    MINRES as MINRES,
    Normal as Normal,
    NormalCG as NormalCG,
    PivotedQR as PivotedQR,
    QR as QR,
    SVD as SVD,
    SparseCholesky as SparseCholesky,
    SparseLU as SparseLU,
    Triangular as Triangular,
    Tridiagonal as Tridiagonal,
    amg_preconditioner as amg_preconditioner,
    ilu_preconditioner as ilu_preconditioner,
    jacobi_preconditioner as jacobi_preconditioner,
)

try:
    __version__ = importlib.metadata.version("linopx")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
