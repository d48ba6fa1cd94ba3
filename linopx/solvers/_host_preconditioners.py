"""Preconditioners applied on the host: algebraic multigrid (pyamg) and incomplete LU (SciPy).

How it fits together (the public entry points and their docs are in `preconditioners.py`):

- A *setup* (an AMG hierarchy, an ILU factorization) is a Python object that lives on the host.
  It is kept in a bounded registry (`_REGISTRY`, least recently used first out) under an integer
  *token*. The preconditioner operator (`HostPreconditioner`) carries the token and the sparse
  matrix's values as array leaves, so that a new preconditioner with the same pattern reuses the
  compiled solve instead of compiling a new one.
- Each application `M v` is one host callback: `buffer_callback` on CPU (JAX's buffers read in
  place, about 10 µs per call), `jax.pure_callback` elsewhere (operands copied to the host). The
  host finds the setup by its token (unique in the process: it names the setup of one set of
  values, which travel with it), compares a sample of the values as a guard against a token moved
  onto other values, and applies it.
- If the registry has forgotten the token (evicted, or another process), the host rebuilds the
  setup from the values it was handed: the same deterministic construction, so a result never
  depends on the registry's state, only its speed does.
- Setup with concrete values (outside `jit`) happens at once, on the host. Setup with traced
  values (inside `jit`/`vmap`/`grad`) is a callback returning the token; it first looks for an
  existing setup of the same values (by a 128-bit digest of their bytes).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _tree
from .._lru import LRUCache
from ..linops.base import AbstractLinearOperator
from ..linops.functions import (
    _probe_diagonal,
    _tridiagonal_by_probing,
    conj,
    diagonal,
    linearise,
    materialise,
    register_tagged,
    tridiagonal,
)
from ..linops.sparse import SparsityPattern
from ..linops.tags import transpose_tags
from .sparse import _layout, _superlu
from .sparse._cache import digest
from .sparse._solver import _pattern_of as pattern_of

try:  # experimental in JAX 0.10; used on CPU only, where it saves copying the operands
    from jax.experimental.buffer_callback import buffer_callback
except ImportError:  # pragma: no cover
    buffer_callback = None

AMG_METHODS = ("smoothed_aggregation", "ruge_stuben")
AMG_HINT = 'pip install "linopx[amg]"'

# Smoothers whose transpose is known (needed for `M.T`, which the backward solve of a gradient
# uses): a Gauss–Seidel/SOR sweep transposes into the opposite sweep on `Aᵀ`; Jacobi and
# Richardson steps into the same step on `Aᵀ`.
_SWEEPING = ("gauss_seidel", "block_gauss_seidel", "sor")
_POINTWISE = ("jacobi", "block_jacobi", "richardson")
_FLIP = {"forward": "backward", "backward": "forward", "symmetric": "symmetric"}

# How many setups are made (per kind): read by tests that check that a gradient sets up once.
SETUPS = {"amg": 0, "ilu": 0}
_SETUPS_LOCK = threading.Lock()


# ---------------------------------------------------------------------------------------------
# Static description of a preconditioner


def freeze(x: Any) -> Any:
    """A hashable version of a pyamg/SciPy keyword value (dicts, lists, tuples, scalars, arrays)."""
    if isinstance(x, dict):
        return ("__dict__",) + tuple(sorted((k, freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return ("__list__" if isinstance(x, list) else "__tuple__",) + tuple(freeze(v) for v in x)
    if isinstance(x, np.ndarray):
        return ("__array__", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, np.generic):
        return x.item()
    hash(x)  # raises TypeError for an unhashable keyword value
    return x


def thaw(x: Any) -> Any:
    if isinstance(x, tuple) and x and x[0] == "__dict__":
        return {k: thaw(v) for k, v in x[1:]}
    if isinstance(x, tuple) and x and x[0] in ("__list__", "__tuple__"):
        items = [thaw(v) for v in x[1:]]
        return items if x[0] == "__list__" else tuple(items)
    if isinstance(x, tuple) and x and x[0] == "__array__":
        return np.frombuffer(x[3], np.dtype(x[1])).reshape(x[2]).copy()
    return x


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to build: `kind` ("amg" or "ilu"), `method` (the AMG method, or "spilu"), the frozen
    keyword arguments, the matrix's shape and the dtype the setup is computed in."""

    kind: str
    method: str
    kwargs: tuple
    shape: tuple
    dtype: str

    def options(self) -> dict:
        return {k: thaw(v) for k, v in self.kwargs}


def _smoother_list(spec: Any) -> list:
    return list(spec) if isinstance(spec, list) else [spec]


def _split_smoother(spec: Any) -> tuple[Any, dict]:
    if spec is None or isinstance(spec, str):
        return spec, {}
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict):
        return spec[0], dict(spec[1])
    raise ValueError(
        f"amg_preconditioner: a smoother must be a name, a pair (name, dict of options) or None, "
        f"got {spec!r}."
    )


def check_smoothers(kwargs: dict) -> None:
    """Raise a `ValueError` for smoothers whose transpose linopx does not know."""
    for key in ("presmoother", "postsmoother"):
        for spec in _smoother_list(kwargs.get(key, ("gauss_seidel", {}))):
            name, _ = _split_smoother(spec)
            if name is not None and name not in _SWEEPING + _POINTWISE:
                raise ValueError(
                    f"amg_preconditioner: the {key} {name!r} is not supported. linopx needs the "
                    "transpose of the V-cycle (for the backward solve of a gradient) and knows it "
                    f"for the smoothers {', '.join(_SWEEPING + _POINTWISE)} (and None); pick one "
                    "of them, or leave the default (symmetric Gauss–Seidel)."
                )


def _flip_smoother(spec: Any) -> Any:
    """The smoother whose step is the transpose of `spec`'s step, applied to `Aᵀ`."""
    name, opts = _split_smoother(spec)
    if name in _SWEEPING:
        opts["sweep"] = _FLIP[opts.get("sweep", "forward")]
    return spec if name is None else (name, opts)


# ---------------------------------------------------------------------------------------------
# Setups (host objects)


def _count(kind: str) -> None:
    with _SETUPS_LOCK:
        SETUPS[kind] += 1


def _compressed(spec: Spec, pattern: SparsityPattern, values: np.ndarray, kind: str):
    """The matrix as SciPy CSR (`kind="csr"`, pyamg's input) or CSC (SuperLU's), duplicates summed
    as in the operator, through the pattern's memoised layout (no sort per setup)."""
    import scipy.sparse as sp

    if kind == "csr":
        layout, cls = _layout.csr(pattern, False, False), sp.csr_matrix
    else:
        layout, cls = _layout.csc(pattern), sp.csc_matrix
    data = layout.data(values, spec.dtype)
    return cls((data, layout.indices, layout.indptr), shape=pattern.shape)


class _Failed:
    """A setup that could not be made (non-finite values, or a singular incomplete factor): every
    application returns NaN, so the solve reports a failure (`RESULTS`) instead of crashing."""

    nbytes = 0

    def __init__(self, why: str):
        self.why = why

    def apply(self, x: np.ndarray, transposed: bool) -> np.ndarray:
        return np.full(x.shape, np.nan, x.dtype)


_RNG_LOCK = threading.Lock()


class _seeded:
    """Run pyamg's setup with NumPy's global generator seeded (and restored afterwards): pyamg
    draws random start vectors from it (spectral radius estimates), and a setup must be a
    deterministic function of the values, so that one rebuilt after eviction is identical."""

    def __enter__(self):
        _RNG_LOCK.acquire()
        self.state = np.random.get_state()
        np.random.seed(0)

    def __exit__(self, *exc):
        np.random.set_state(self.state)
        _RNG_LOCK.release()


class _AMG:
    """A pyamg hierarchy and the V-cycle applied with it (and, made when first needed, the V-cycle
    of the transposed hierarchy, which applies `Mᵀ`)."""

    def __init__(self, spec: Spec, a):
        import pyamg

        options = spec.options()
        build = (
            pyamg.smoothed_aggregation_solver
            if spec.method == "smoothed_aggregation"
            else pyamg.ruge_stuben_solver
        )
        _count("amg")
        with _seeded():
            self.ml = build(a, **options)
        self.options = options
        self.spec = spec
        self._self_transpose = None
        self._transposed = None
        self._lock = threading.Lock()
        self.nbytes = sum(
            getattr(getattr(lvl, name, None), "data", np.zeros(0)).nbytes * 2
            for lvl in self.ml.levels
            for name in ("A", "P", "R")
        )

    def _transposed_ml(self):
        """The hierarchy of `Aᵀ` whose V-cycle is the transpose of this one's: every level's
        matrix transposed, prolongation and restriction swapped and transposed, pre- and
        post-smoothers swapped with their sweeps reversed (see `_flip_smoother`), the same coarse
        solver (whose transposes are the same solver on `Aᵀ`)."""
        from pyamg.multilevel import MultilevelSolver
        from pyamg.relaxation.smoothing import change_smoothers

        with self._lock:
            if self._transposed is None:
                levels = []
                for lvl in self.ml.levels:
                    new = MultilevelSolver.Level()
                    new.A = lvl.A.T.tocsr()
                    if hasattr(lvl, "P"):
                        new.P = lvl.R.T.tocsr()
                        new.R = lvl.P.T.tocsr()
                    levels.append(new)
                ml = MultilevelSolver(
                    levels, coarse_solver=self.options.get("coarse_solver", "pinv")
                )
                default = ("gauss_seidel", {"sweep": "symmetric"})
                if self.spec.method == "smoothed_aggregation":
                    default = ("block_gauss_seidel", {"sweep": "symmetric"})
                pre = _smoother_list(self.options.get("presmoother", default))
                post = _smoother_list(self.options.get("postsmoother", default))
                with _seeded():
                    change_smoothers(
                        ml, [_flip_smoother(s) for s in post], [_flip_smoother(s) for s in pre]
                    )
                self._transposed = ml
            return self._transposed

    def self_transpose(self) -> bool:
        """Whether the V-cycle is its own transpose: a symmetric matrix and symmetric smoothing
        (checked exactly, when a transposed application first asks)."""
        if self._self_transpose is None:
            a = self.ml.levels[0].A
            diff = a - a.T
            self._self_transpose = bool(self.ml.symmetric_smoothing) and (
                diff.nnz == 0 or not np.any(diff.data)
            )
        return self._self_transpose

    def apply(self, x: np.ndarray, transposed: bool) -> np.ndarray:
        ml = self.ml if (not transposed or self.self_transpose()) else self._transposed_ml()
        out = np.empty_like(x)
        for j in range(x.shape[1]):
            # One V-cycle from a zero initial guess: what pyamg's `aspreconditioner` applies.
            out[:, j] = ml.solve(x[:, j], maxiter=1, cycle="V", tol=1e-12)
        return out


class _ILU:
    """SciPy's `spilu` (SuperLU's incomplete LU) and its solves with `L U` or `(L U)ᵀ`."""

    def __init__(self, spec: Spec, a, pattern: SparsityPattern):
        import scipy.sparse.linalg as sla

        options = spec.options()
        # The column ordering of the sparse direct solve (minimum degree on `Aᵀ + A` for a
        # structurally symmetric pattern, else COLAMD) unless one is given: with SciPy's default
        # COLAMD on a 5-point convection–diffusion matrix the factors hit the `fill_factor` cap,
        # SuperLU then drops more, and GMRES took 157 iterations instead of 3 (docs/iterative.md).
        options.setdefault("permc_spec", _superlu.ordering(pattern))
        _count("ilu")
        self.ilu = sla.spilu(a, **options)
        self.nbytes = (self.ilu.L.nnz + self.ilu.U.nnz) * 12

    def apply(self, x: np.ndarray, transposed: bool) -> np.ndarray:
        return self.ilu.solve(x, trans="T" if transposed else "N")


def build(spec: Spec, pattern: SparsityPattern, values: np.ndarray, raise_errors: bool):
    """A new setup for `values`. With `raise_errors` (a setup outside `jit`), a singular incomplete
    factor raises a `ValueError`; otherwise it gives a `_Failed` setup. Non-finite values always
    give a `_Failed` setup (the solve then reports them)."""
    if not np.all(np.isfinite(values)):
        return _Failed("non-finite values")
    if spec.kind == "amg":
        return _AMG(spec, _compressed(spec, pattern, values, "csr"))
    try:
        return _ILU(spec, _compressed(spec, pattern, values, "csc"), pattern)
    except RuntimeError as e:  # SuperLU: "Factor is exactly singular"
        if raise_errors:
            raise ValueError(
                f"ilu_preconditioner: the incomplete factorization failed ({e}). Try a smaller "
                "`drop_tol` or a larger `fill_factor`, or another preconditioner."
            ) from None
        return _Failed(str(e))


# ---------------------------------------------------------------------------------------------
# The registry


class _Entry:
    __slots__ = ("pattern", "sample", "setup", "spec")

    def __init__(self, spec, pattern, sample, setup):
        self.spec = spec
        self.pattern = pattern
        self.sample = sample
        self.setup = setup


_TOKENS = itertools.count(1)
_TOKENS_LOCK = threading.Lock()
DEFAULT_MAX_ENTRIES = 8
DEFAULT_MAX_BYTES = 2 * 2**30
_REGISTRY = LRUCache(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES, weigh=lambda e: e.setup.nbytes)
# (spec, pattern key, digest of the values) -> token, for setups made inside `jit`.
_BY_DIGEST = LRUCache(4 * DEFAULT_MAX_ENTRIES)
_SAMPLES = 1024


def _sample(values: np.ndarray) -> np.ndarray:
    """Up to `_SAMPLES` evenly spaced values (a copy): what an entry keeps to recognise the values
    it was made from, at O(1) cost per application (comparing all of them, or even copying them,
    costs about a tenth of a V-cycle on large problems)."""
    n = values.shape[0]
    if n <= _SAMPLES:
        return np.array(values, copy=True)
    return values[np.linspace(0, n - 1, _SAMPLES).astype(np.int64)]


def _new_token() -> int:
    with _TOKENS_LOCK:
        token = next(_TOKENS)
    if token >= 2**31 - 1:  # pragma: no cover - two billion setups in one process
        raise RuntimeError("linopx: preconditioner tokens exhausted; restart the process.")
    return token


def register(spec, pattern, values, raise_errors: bool) -> int:
    """Set up for concrete `values` now and return the token of the new setup."""
    token = _new_token()
    entry = _Entry(spec, pattern, _sample(values), build(spec, pattern, values, raise_errors))
    _REGISTRY.get(token, lambda: entry)
    return token


def _lookup(spec, pattern, token: int, values: np.ndarray, index: tuple | None = None):
    """The setup of `token`, or a setup made now from `values` (kept under `token`, so that the
    next application finds it) if the registry has forgotten it. `pattern` is the concrete
    pattern, or None with `index = (rows, cols)` for a traced one (rebuilt only on a miss).

    A token is unique in the process and names the setup made from one set of values, which
    travel with it in the operator; the kept sample of those values (and of a traced pattern's
    indices) is compared with the incoming ones as a guard against a token moved onto other values
    (by editing the operator's leaves): then a setup of the incoming values is made and used,
    never the other one."""
    made = []

    def the_pattern():
        if pattern is not None:
            return pattern
        # Copies: the application callback's operands are views of JAX buffers, valid only
        # during the call, and a rebuilt pattern is kept.
        return pattern_of(np.array(index[0]), np.array(index[1]), spec.shape)

    def make():
        made.append(True)
        p = the_pattern()
        return _Entry(spec, p, _sample(values), build(spec, p, values, False))

    entry = _REGISTRY.get(token, make)
    if made:
        return entry.setup
    if pattern is not None:
        same_pattern = entry.pattern == pattern
    else:
        same_pattern = all(
            a.shape == b.shape and np.array_equal(_sample(a), _sample(b))
            for a, b in zip((entry.pattern.rows, entry.pattern.cols), index)
        )
    if (
        entry.spec == spec
        and same_pattern
        and np.array_equal(entry.sample, _sample(values), equal_nan=True)
    ):
        return entry.setup
    return build(spec, the_pattern(), values, False)


def _setup_traced(spec, pattern, values: np.ndarray) -> int:
    """The token of a setup for `values`, reusing one made from the same values if registered."""
    key = (spec, pattern.key, digest(values))
    token = _BY_DIGEST.get(key, _new_token)
    _lookup(spec, pattern, token, values)
    return token


def clear_cache() -> None:
    """Forget every registered setup (they are rebuilt when next needed). The patterns of traced
    operators rebuilt on the host are the sparse solver's (`lx.clear_caches()` clears them)."""
    _REGISTRY.clear()
    _BY_DIGEST.clear()


def cache_info() -> dict:
    return {"setups": _REGISTRY.info(), "digests": _BY_DIGEST.info(), "made": dict(SETUPS)}


# ---------------------------------------------------------------------------------------------
# Host callbacks


def _members(arrays: list[np.ndarray]):
    """Broadcast the callback operands (`token`, `values`, [`rows`, `cols`], ...), each with a
    batch shape before its last axis (the token: a trailing axis of 1), to one batch. Returns the
    batch shape, the number of members and each operand as a `(members, last axis)` array."""
    batch = np.broadcast_shapes(*(a.shape[:-1] for a in arrays))
    total = math.prod(batch)
    flat = [np.broadcast_to(a, batch + a.shape[-1:]).reshape(total, a.shape[-1]) for a in arrays]
    return batch, total, flat


def host_setup(spec, pattern, shape, values, *index):
    """The setup callback: `values` `(*batch, nnz)` (and for a traced pattern `rows`, `cols`)
    give tokens `(*batch,)`."""
    arrays = [np.asarray(values)] + [np.asarray(i) for i in index]
    batch, total, flat = _members(arrays)
    tokens = np.empty(total, np.int32)
    for i in range(total):
        p = pattern if pattern is not None else pattern_of(flat[1][i], flat[2][i], shape)
        tokens[i] = _setup_traced(spec, p, flat[0][i])
    return tokens.reshape(batch)


def host_apply(spec, pattern, shape, transposed, conjugated, out_dtype, token, values, *rest):
    """The application callback: `token` `(*bt,)`, `values` `(*bv, nnz)`, for a traced pattern
    `rows`, `cols` `(*br, nnz)`, and `x` `(*bx, n)`, broadcasting to one batch. Members sharing a
    setup are applied together as one block of columns."""
    *index, x = rest
    arrays = [np.asarray(token)[..., None], np.asarray(values)] + [np.asarray(i) for i in index]
    arrays.append(np.asarray(x))
    batch, total, flat = _members(arrays)
    n = shape[0]
    out = np.empty((total, n), out_dtype)
    # Group members by (token, values row): for a batch of vectors with one matrix, one lookup.
    groups: dict = {}
    for i in range(total):
        vrow = flat[1][i]
        key = (int(flat[0][i, 0]), vrow.__array_interface__["data"][0])
        groups.setdefault(key, []).append(i)
    setup_dtype = np.dtype(spec.dtype)
    for (tok, _), members in groups.items():
        i0 = members[0]
        index = None if pattern is not None else (flat[2][i0], flat[3][i0])
        setup = _lookup(spec, pattern, tok, np.asarray(flat[1][i0], setup_dtype), index)
        rhs = flat[-1][members].T
        if conjugated:
            rhs = np.conj(rhs)
        if rhs.dtype.kind == "c" and setup_dtype.kind != "c":
            y = setup.apply(np.ascontiguousarray(rhs.real, setup_dtype), transposed) + 1j * (
                setup.apply(np.ascontiguousarray(rhs.imag, setup_dtype), transposed)
            )
        else:
            y = setup.apply(np.ascontiguousarray(rhs, np.result_type(rhs, setup_dtype)), transposed)
        if conjugated:
            y = np.conj(y)
        out[members] = y.T.astype(out_dtype, copy=False)
    return out.reshape(batch + (n,))


# ---------------------------------------------------------------------------------------------
# The operator


class HostPreconditioner(AbstractLinearOperator):
    """`M ≈ A⁻¹` applied on the host by a setup in the registry (see the module docstring).
    Built by `lx.amg_preconditioner` and `lx.ilu_preconditioner`; not meant to be built directly."""

    token: jax.Array
    values: jax.Array
    index: tuple | None
    spec: Spec = eqx.field(static=True)
    pattern: SparsityPattern | None = eqx.field(static=True)
    transposed: bool = eqx.field(static=True)
    conjugated: bool = eqx.field(static=True)
    tags: frozenset = eqx.field(static=True)

    def mv(self, vector):
        n = self.spec.shape[0]
        if jnp.ndim(vector) != 1 or jnp.shape(vector)[0] != n:
            raise ValueError(
                f"{self._name()}: takes a flat vector of shape ({n},), got "
                f"{getattr(vector, 'shape', type(vector).__name__)}."
            )
        x = jnp.asarray(vector)
        dtype = _tree.common_dtype(self.values.dtype, x.dtype)
        operands = (self.token, self.values, *(() if self.index is None else self.index))
        out = jax.ShapeDtypeStruct((n,), dtype)
        if _on_cpu(self.values):
            # On CPU the callback reads JAX's buffers in place: about 10 µs per call, where
            # `pure_callback` copies its operands (the matrix values too) on every application
            # (0.4 ms for 112k values, 1.6 ms for 2.2M, against a 1-30 ms V-cycle or ILU solve).
            return buffer_callback(_bound_buffer_apply(self), out, vmap_method="expand_dims")(
                *operands, x.astype(dtype)
            )
        # One call for a whole batch: unbatched operands arrive with leading axes of size 1;
        # members sharing a setup are applied as one block.
        return jax.pure_callback(
            _bound_apply(self), out, *operands, x.astype(dtype), vmap_method="expand_dims"
        )

    def _name(self) -> str:
        return "amg_preconditioner" if self.spec.kind == "amg" else "ilu_preconditioner"

    def as_matrix(self):
        n = self.spec.shape[0]
        return jax.vmap(self.mv, out_axes=1)(jnp.eye(n, dtype=self.values.dtype))

    def transpose(self):
        return HostPreconditioner(
            self.token,
            self.values,
            self.index,
            self.spec,
            self.pattern,
            not self.transposed,
            self.conjugated,
            transpose_tags(self.tags),
        )

    def in_structure(self):
        return jax.ShapeDtypeStruct((self.spec.shape[1],), self.values.dtype)

    def out_structure(self):
        return jax.ShapeDtypeStruct((self.spec.shape[0],), self.values.dtype)


def _on_cpu(values: Any) -> bool:
    """Whether the callback's operands live on the CPU (their device's platform when concrete, else
    JAX's default backend, where a traced computation runs)."""
    if buffer_callback is None:  # pragma: no cover - a JAX without `buffer_callback`
        return False
    try:
        platform = next(iter(values.devices())).platform
    except Exception:  # noqa: BLE001 - tracers have no usable `.devices()`
        platform = jax.default_backend()
    return platform == "cpu"


def _bound_buffer_apply(op: HostPreconditioner):
    """`host_apply` for `buffer_callback`: reads the input buffers as NumPy views (valid only during
    the call: nothing keeps a reference to them, see `_sample` and `build`) and writes the output
    buffer in place."""

    def call(ctx, out, token, values, *rest):
        del ctx
        result = np.asarray(out)
        result[...] = host_apply(
            op.spec,
            op.pattern,
            op.spec.shape,
            op.transposed,
            op.conjugated,
            result.dtype,
            np.asarray(token),
            np.asarray(values),
            *(np.asarray(r) for r in rest),
        )

    return call


def _bound_apply(op: HostPreconditioner):
    def call(token, values, *rest):
        return host_apply(
            op.spec,
            op.pattern,
            op.spec.shape,
            op.transposed,
            op.conjugated,
            np.dtype(rest[-1].dtype),
            token,
            values,
            *rest,
        )

    return call


register_tagged(HostPreconditioner)
materialise.register(HostPreconditioner)(lambda op: op)
linearise.register(HostPreconditioner)(lambda op: op)
diagonal.register(HostPreconditioner)(_probe_diagonal)
tridiagonal.register(HostPreconditioner)(_tridiagonal_by_probing)


@conj.register(HostPreconditioner)
def _(op):
    if not jnp.issubdtype(op.values.dtype, jnp.complexfloating):
        return op
    return HostPreconditioner(
        op.token,
        op.values,
        op.index,
        op.spec,
        op.pattern,
        op.transposed,
        not op.conjugated,
        op.tags,
    )


def make(operator, spec: Spec, tags, raise_errors: bool = True) -> HostPreconditioner:
    """The preconditioner of the sparse `operator` for `spec`: set up now if its values and pattern
    are concrete, else in a host callback (see the module docstring)."""
    values = jax.lax.stop_gradient(operator.values)
    if operator.pattern is not None and not isinstance(values, jax.core.Tracer):
        token = register(spec, operator.pattern, np.asarray(values, spec.dtype), raise_errors)
        token = jnp.asarray(token, jnp.int32)
    else:
        index = () if operator.index is None else operator.index
        token = jax.pure_callback(
            lambda v, *i: host_setup(
                spec, operator.pattern, spec.shape, np.asarray(v, spec.dtype), *i
            ),
            jax.ShapeDtypeStruct((), jnp.int32),
            values,
            *index,
            vmap_method="expand_dims",
        )
    return HostPreconditioner(
        token, values, operator.index, spec, operator.pattern, False, False, frozenset(tags)
    )
