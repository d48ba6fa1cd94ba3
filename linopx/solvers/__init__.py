"""Linear solvers. Each family lives in its own module; the public names are re-exported here."""

from .auto import AutoLinearSolver as AutoLinearSolver
from .base import AbstractLinearSolver as AbstractLinearSolver
from .cholesky import Cholesky as Cholesky
from .diagonal import Diagonal as Diagonal
from .lu import LU as LU
from .normal import Normal as Normal
from .qr import PivotedQR as PivotedQR, QR as QR
from .svd import SVD as SVD
from .triangular import Triangular as Triangular
from .tridiagonal import Tridiagonal as Tridiagonal
