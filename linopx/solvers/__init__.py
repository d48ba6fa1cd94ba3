"""Linear solvers. Each family lives in its own module; the public names are re-exported here."""

from .auto import AutoLinearSolver as AutoLinearSolver
from .base import AbstractLinearSolver as AbstractLinearSolver
from .bicgstab import BiCGStab as BiCGStab
from .cg import CG as CG
from .cholesky import Cholesky as Cholesky
from .diagonal import Diagonal as Diagonal
from .gmres import GMRES as GMRES
from .lsmr import LSMR as LSMR
from .lsqr import LSQR as LSQR
from .lu import LU as LU
from .minres import MINRES as MINRES
from .normal import Normal as Normal, NormalCG as NormalCG
from .preconditioners import (
    amg_preconditioner as amg_preconditioner,
    ilu_preconditioner as ilu_preconditioner,
    jacobi_preconditioner as jacobi_preconditioner,
)
from .qr import PivotedQR as PivotedQR, QR as QR
from .sparse import SparseCholesky as SparseCholesky, SparseLU as SparseLU
from .svd import SVD as SVD
from .triangular import Triangular as Triangular
from .tridiagonal import Tridiagonal as Tridiagonal
