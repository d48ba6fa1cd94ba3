"""linopx: differentiable linear operators and linear solvers for JAX.

```python
import linopx as lx
sol = lx.linear_solve(lx.MatrixLinearOperator(A), b)      # A⁺ b, differentiable
```
"""

import importlib.metadata

from . import internal as internal
from ._caches import cache_info as cache_info
from ._caches import clear_caches as clear_caches
from ._slogdet import (
    Hutchinson as Hutchinson,
)
from ._slogdet import (
    StochasticLanczos as StochasticLanczos,
)
from ._slogdet import (
    slogdet as slogdet,
)
from ._solution import (
    RESULTS as RESULTS,
)
from ._solution import (
    LinearSolveError as LinearSolveError,
)
from ._solution import (
    Solution as Solution,
)
from ._solve import invert as invert
from ._solve import linear_solve as linear_solve
from .linops import (
    AbstractLinearOperator as AbstractLinearOperator,
)
from .linops import (
    AddLinearOperator as AddLinearOperator,
)
from .linops import (
    ComposedLinearOperator as ComposedLinearOperator,
)
from .linops import (
    DiagonalLinearOperator as DiagonalLinearOperator,
)
from .linops import (
    DivLinearOperator as DivLinearOperator,
)
from .linops import (
    FunctionLinearOperator as FunctionLinearOperator,
)
from .linops import (
    IdentityLinearOperator as IdentityLinearOperator,
)
from .linops import (
    JacobianLinearOperator as JacobianLinearOperator,
)
from .linops import (
    MatrixLinearOperator as MatrixLinearOperator,
)
from .linops import (
    MulLinearOperator as MulLinearOperator,
)
from .linops import (
    NegLinearOperator as NegLinearOperator,
)
from .linops import (
    PyTreeLinearOperator as PyTreeLinearOperator,
)
from .linops import (
    SparseCOOLinearOperator as SparseCOOLinearOperator,
)
from .linops import (
    TaggedLinearOperator as TaggedLinearOperator,
)
from .linops import (
    TangentLinearOperator as TangentLinearOperator,
)
from .linops import (
    TridiagonalLinearOperator as TridiagonalLinearOperator,
)
from .linops import (
    conj as conj,
)
from .linops import (
    diagonal as diagonal,
)
from .linops import (
    diagonal_tag as diagonal_tag,
)
from .linops import (
    has_unit_diagonal as has_unit_diagonal,
)
from .linops import (
    is_diagonal as is_diagonal,
)
from .linops import (
    is_lower_triangular as is_lower_triangular,
)
from .linops import (
    is_negative_semidefinite as is_negative_semidefinite,
)
from .linops import (
    is_positive_semidefinite as is_positive_semidefinite,
)
from .linops import (
    is_symmetric as is_symmetric,
)
from .linops import (
    is_tridiagonal as is_tridiagonal,
)
from .linops import (
    is_upper_triangular as is_upper_triangular,
)
from .linops import (
    linearise as linearise,
)
from .linops import (
    lower_triangular_tag as lower_triangular_tag,
)
from .linops import (
    materialise as materialise,
)
from .linops import (
    negative_semidefinite_tag as negative_semidefinite_tag,
)
from .linops import (
    positive_semidefinite_tag as positive_semidefinite_tag,
)
from .linops import (
    symmetric_tag as symmetric_tag,
)
from .linops import (
    transpose_tags as transpose_tags,
)
from .linops import (
    transpose_tags_rules as transpose_tags_rules,
)
from .linops import (
    tridiagonal as tridiagonal,
)
from .linops import (
    tridiagonal_tag as tridiagonal_tag,
)
from .linops import (
    unit_diagonal_tag as unit_diagonal_tag,
)
from .linops import (
    upper_triangular_tag as upper_triangular_tag,
)
from .solvers import (
    CG as CG,
)
from .solvers import (
    GMRES as GMRES,
)
from .solvers import (
    LSMR as LSMR,
)
from .solvers import (
    LSQR as LSQR,
)
from .solvers import (
    LU as LU,
)
from .solvers import (
    MINRES as MINRES,
)
from .solvers import (
    QR as QR,
)
from .solvers import (
    SVD as SVD,
)
from .solvers import (
    AbstractLinearSolver as AbstractLinearSolver,
)
from .solvers import (
    AutoLinearSolver as AutoLinearSolver,
)
from .solvers import (
    BiCGStab as BiCGStab,
)
from .solvers import (
    Cholesky as Cholesky,
)
from .solvers import (
    Diagonal as Diagonal,
)
from .solvers import (
    Normal as Normal,
)
from .solvers import (
    NormalCG as NormalCG,
)
from .solvers import (
    PivotedQR as PivotedQR,
)
from .solvers import (
    SparseLU as SparseLU,
)
from .solvers import (
    Triangular as Triangular,
)
from .solvers import (
    Tridiagonal as Tridiagonal,
)
from .solvers import (
    jacobi_preconditioner as jacobi_preconditioner,
)

try:
    __version__ = importlib.metadata.version("linopx")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
