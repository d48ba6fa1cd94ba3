"""Linear operators, their tags, and the functions that inspect and transform them."""

from .base import AbstractLinearOperator as AbstractLinearOperator
from .composite import (
    AddLinearOperator as AddLinearOperator,
    ComposedLinearOperator as ComposedLinearOperator,
    DivLinearOperator as DivLinearOperator,
    MulLinearOperator as MulLinearOperator,
    NegLinearOperator as NegLinearOperator,
    TaggedLinearOperator as TaggedLinearOperator,
)
from .diagonal import (
    DiagonalLinearOperator as DiagonalLinearOperator,
    IdentityLinearOperator as IdentityLinearOperator,
    TridiagonalLinearOperator as TridiagonalLinearOperator,
)
from .function import (
    FunctionLinearOperator as FunctionLinearOperator,
    JacobianLinearOperator as JacobianLinearOperator,
)
from .functions import (
    conj as conj,
    diagonal as diagonal,
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
    materialise as materialise,
    tridiagonal as tridiagonal,
)
from .matrix import MatrixLinearOperator as MatrixLinearOperator
from .pytree import PyTreeLinearOperator as PyTreeLinearOperator
from .sparse import SparseCOOLinearOperator as SparseCOOLinearOperator
from .tangent import TangentLinearOperator as TangentLinearOperator
from .tags import (
    diagonal_tag as diagonal_tag,
    hermitian_tag as hermitian_tag,
    lower_triangular_tag as lower_triangular_tag,
    negative_semidefinite_tag as negative_semidefinite_tag,
    positive_semidefinite_tag as positive_semidefinite_tag,
    symmetric_tag as symmetric_tag,
    transpose_tags as transpose_tags,
    transpose_tags_rules as transpose_tags_rules,
    tridiagonal_tag as tridiagonal_tag,
    unit_diagonal_tag as unit_diagonal_tag,
    upper_triangular_tag as upper_triangular_tag,
)
