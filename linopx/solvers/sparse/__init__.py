"""Sparse direct solvers: `SparseLU` and `SparseCholesky`, and their backends (SuperLU, MKL
PARDISO, SuiteSparse's UMFPACK and CHOLMOD, NVIDIA cuDSS).

Cache control (the factorization cache only ever changes speed, never results):

```python
from linopx.solvers import sparse
sparse.clear_cache()                                   # release all cached factorizations
sparse.set_cache_limits(max_entries=4, max_bytes=2**30) # bound it (max_entries=0: off)
sparse.cache_info()                                    # entries, bytes, hits, misses, factorizations
```
"""

from ._cholesky import SparseCholesky as SparseCholesky
from ._solver import SparseLU as SparseLU
from ._solver import cache_info as cache_info
from ._solver import clear_cache as clear_cache
from ._solver import reset_counters as reset_counters
from ._solver import set_cache_limits as set_cache_limits

__all__ = ["SparseCholesky", "SparseLU", "cache_info", "clear_cache", "reset_counters", "set_cache_limits"]
