"""Every cache linopx keeps is bounded, releases what it evicts, and never changes a result; threads
solving at once get their own answers. Memory measurements run in fresh subprocesses (see
`test_memory.py` for the long-loop checks)."""

from __future__ import annotations

import gc
import threading
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import linopx as lx
from linopx import _solve
from linopx._lru import LRUCache
from linopx.autodiff import primitive
from linopx.solvers.sparse import _cache, _pardiso, _superlu
from linopx.solvers.sparse import _solver as sparse_solver

from test_memory import SPARSE_BACKENDS, run_script

HAVE_PARDISO = "pardiso" in SPARSE_BACKENDS


class _Value:
    """A weak-referenceable stand-in for a cached value."""


def poisson(k: int):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(k, k))
    a = (sp.kron(sp.identity(k), t) + sp.kron(t, sp.identity(k))).tocoo()
    return a.data, a.row.astype(np.int32), a.col.astype(np.int32), k * k


@pytest.fixture
def fresh_sparse_cache():
    """An empty factorization cache with default limits before and after the test."""
    lx.SparseLU.clear_cache()
    lx.SparseLU.set_cache_limits(_cache.DEFAULT_MAX_ENTRIES, _cache.DEFAULT_MAX_BYTES)
    sparse_solver.reset_counters()
    yield
    lx.SparseLU.clear_cache()
    lx.SparseLU.set_cache_limits(_cache.DEFAULT_MAX_ENTRIES, _cache.DEFAULT_MAX_BYTES)
    sparse_solver.reset_counters()


# ---- the generic LRU behind the tracing and dispatch caches ------------------------------------


def test_lru_bounded_by_count_and_releases_evicted():
    cache = LRUCache(3)
    refs = []
    for i in range(5):
        value = cache.get(i, _Value)
        refs.append(weakref.ref(value))
        del value
    gc.collect()
    assert len(cache) == 3
    assert [r() is None for r in refs] == [True, True, False, False, False]
    assert cache.info()["evictions"] == 2
    # A hit refreshes: key 2 survives the next insertion, key 3 goes.
    cache.get(2, _Value)
    cache.get(5, _Value)
    gc.collect()
    assert refs[2]() is not None and refs[3]() is None
    cache.clear()
    gc.collect()
    assert len(cache) == 0 and all(r() is None for r in refs)


def test_lru_bounded_by_bytes():
    cache = LRUCache(100, max_bytes=10, weigh=len)
    cache.get("a", lambda: "x" * 4)
    cache.get("b", lambda: "x" * 4)
    cache.get("c", lambda: "x" * 4)  # 12 bytes > 10: "a" goes
    assert cache.info()["entries"] == 2 and cache.info()["bytes"] == 8
    heavy = cache.get("d", lambda: "x" * 11)  # heavier than the bound on its own: used, not kept
    assert heavy == "x" * 11 and cache.info()["entries"] == 2
    made = []
    cache.get("d", lambda: made.append(1) or "y")
    assert made == [1]


def test_eager_solve_cache_bounded_and_releases(monkeypatch, rng):
    monkeypatch.setattr(_solve, "_EAGER_SOLVES", LRUCache(3))
    refs = []
    for n in range(2, 8):
        a = rng.standard_normal((n, n)) + n * np.eye(n)
        b = rng.standard_normal(n)
        x = lx.linear_solve(lx.MatrixLinearOperator(jnp.asarray(a)), jnp.asarray(b)).value
        np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-10)
        refs.extend(weakref.ref(fn) for fn, _ in _solve._EAGER_SOLVES.values() if fn)
    gc.collect()
    assert len(_solve._EAGER_SOLVES) == 3
    alive = {id(r()) for r in refs if r() is not None}
    assert len(alive) == 3  # exactly the three kept; every evicted compiled solve was freed


def test_trace_cache_bounded_and_releases(monkeypatch, rng):
    monkeypatch.setattr(primitive, "_TRACE_CACHE", LRUCache(2, max_bytes=1 << 20,
                                                           weigh=primitive._TRACE_CACHE._weigh))
    refs = []
    for n in range(2, 7):
        a = jnp.asarray(rng.standard_normal((n, n)) + n * np.eye(n))
        jax.jit(lambda a, b: lx.linear_solve(lx.MatrixLinearOperator(a), b).value)(a, jnp.ones(n))
        refs.extend(weakref.ref(e[2]) for e in primitive._TRACE_CACHE.values() if e[2] is not None)
    gc.collect()
    assert len(primitive._TRACE_CACHE) == 2
    assert len({id(r()) for r in refs if r() is not None}) <= 2


def test_clear_caches_empties_everything(fresh_sparse_cache, rng):
    data, rows, cols, n = poisson(6)
    lx.linear_solve(lx.MatrixLinearOperator(jnp.eye(3) * 2.0), jnp.ones(3))
    lx.linear_solve(lx.SparseCOOLinearOperator(jnp.asarray(data), rows, cols, (n, n)), jnp.ones(n),
                    lx.SparseLU(backend="superlu"))
    info = lx.cache_info()
    assert info["eager_solves"]["entries"] >= 1 and info["sparse"]["entries"] >= 1
    lx.clear_caches()
    info = lx.cache_info()
    assert info["eager_solves"]["entries"] == 0
    assert info["traced_programs"]["entries"] == 0
    assert info["eager_binds"]["entries"] == 0
    assert info["sparse"]["entries"] == 0


# ---- the sparse factorization cache ------------------------------------------------------------


class _FakeFactor:
    def __init__(self, closed: list, name):
        self.closed = closed
        self.name = name

    def close(self):
        self.closed.append(self.name)


def test_factor_cache_evicts_by_count_and_bytes_and_releases():
    closed: list = []
    cache = _cache.FactorCache(max_entries=2, max_bytes=1000)

    def run(i, nbytes=10):
        values = np.array([float(i)])
        return cache.run(("k",), values, lambda: (_FakeFactor(closed, i), nbytes), lambda f: f.name)

    assert [run(i) for i in range(4)] == [0, 1, 2, 3]
    assert closed == [0, 1] and cache.info()["entries"] == 2
    assert run(3) == 3 and cache.info()["hits"] == 1  # a hit factorizes nothing
    # Too big to keep: used once, released at once, the kept entries untouched.
    assert run(9, nbytes=5000) == 9
    assert closed == [0, 1, 9] and cache.info()["entries"] == 2
    # A byte bound evicts the least recently used entries until the rest fit.
    assert run(5, nbytes=600) == 5
    assert closed == [0, 1, 9, 2] and cache.info()["entries"] == 2
    cache.set_limits(max_entries=1)
    assert closed == [0, 1, 9, 2, 3]
    cache.clear()
    assert closed == [0, 1, 9, 2, 3, 5] and cache.info()["entries"] == 0


def test_superlu_factor_dies_on_its_owner_thread():
    """The mechanism behind the leak fix: whichever thread releases a factor, the `SuperLU` object
    is destroyed on the thread that created it."""
    data, rows, cols, n = poisson(5)
    pattern = lx.SparseCOOLinearOperator(jnp.asarray(data), rows, cols, (n, n)).pattern
    factor, _ = _superlu.factorize(pattern, data, np.dtype(np.float64), "general")
    seen = []
    original = _superlu._drop

    def spy(box):
        seen.append(threading.get_ident())
        original(box)

    _superlu._drop = spy
    try:
        t = threading.Thread(target=factor.close)
        t.start()
        t.join()
        _superlu.sync()
    finally:
        _superlu._drop = original
    assert seen == [factor.owner._ident]
    assert seen[0] != threading.get_ident()


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_digest_collision_never_returns_wrong_factors(backend, fresh_sparse_cache, monkeypatch):
    # Every digest equal: the byte-for-byte check must refuse the cached factors of other values.
    monkeypatch.setattr(_cache, "digest", lambda values: "same")
    data, rows, cols, n = poisson(8)
    b = np.linspace(1.0, 2.0, n)
    solve = jax.jit(lambda v: lx.linear_solve(lx.SparseCOOLinearOperator(v, rows, cols, (n, n)),
                                              jnp.asarray(b), lx.SparseLU(backend=backend)).value)
    for scale in (1.0, 2.0, 1.0, 3.0):
        v = data * scale
        x = solve(jnp.asarray(v))
        ref = spla.spsolve(sp.csc_matrix((v, (rows, cols)), shape=(n, n)), b)
        np.testing.assert_allclose(x, ref, rtol=1e-10)


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_too_big_to_keep_still_right(backend, fresh_sparse_cache):
    lx.SparseLU.set_cache_limits(max_bytes=1)  # every factorization is too big to keep
    data, rows, cols, n = poisson(8)
    b = jnp.linspace(1.0, 2.0, n)

    def loss(v):
        op = lx.SparseCOOLinearOperator(v, rows, cols, (n, n))
        return jnp.sum(lx.linear_solve(op, b, lx.SparseLU(backend=backend)).value ** 2)

    v = jnp.asarray(data)
    g = jax.jit(jax.grad(loss))(v)
    dense = sp.csc_matrix((data, (rows, cols)), shape=(n, n)).toarray()
    x = np.linalg.solve(dense, np.asarray(b))
    lam = np.linalg.solve(dense.T, 2 * x)
    np.testing.assert_allclose(g, -lam[rows] * x[cols], rtol=1e-9, atol=1e-12)
    info = lx.SparseLU.cache_info()
    assert info["entries"] == 0
    assert info["factorizations"][backend] == 2  # nothing kept: the backward solve refactorizes


@pytest.mark.skipif(not HAVE_PARDISO, reason="PARDISO (pypardiso) is not installed")
def test_pardiso_handles_bounded_and_released(fresh_sparse_cache):
    lx.SparseLU.set_cache_limits(max_entries=2)
    for k in range(4, 12):  # eight patterns, more than the handles kept analysed
        data, rows, cols, n = poisson(k)
        op = lx.SparseCOOLinearOperator(jnp.asarray(data), rows, cols, (n, n))
        lx.linear_solve(op, jnp.ones(n), lx.SparseLU(backend="pardiso"))
        assert len(_pardiso._handles) <= _pardiso._MAX_HANDLES
    assert lx.SparseLU.cache_info()["pardiso_analyses"] == 8
    lx.SparseLU.clear_cache()
    assert len(_pardiso._handles) == 0


@pytest.mark.skipif(not HAVE_PARDISO, reason="PARDISO (pypardiso) is not installed")
def test_pardiso_more_live_factors_than_slots(fresh_sparse_cache):
    # More live factorizations of one pattern than one analysis has slots: a second analysis is
    # made, every answer is right, and clearing releases both.
    data, rows, cols, n = poisson(6)
    b = np.ones(n)
    solve = jax.jit(lambda v: lx.linear_solve(lx.SparseCOOLinearOperator(v, rows, cols, (n, n)),
                                              jnp.asarray(b), lx.SparseLU(backend="pardiso")).value)
    for i in range(_pardiso.SLOTS + 2):
        v = data * (1.0 + 0.1 * i)
        ref = spla.spsolve(sp.csc_matrix((v, (rows, cols)), shape=(n, n)), b)
        np.testing.assert_allclose(solve(jnp.asarray(v)), ref, rtol=1e-10)
    assert lx.SparseLU.cache_info()["pardiso_analyses"] == 2
    lx.SparseLU.clear_cache()
    assert len(_pardiso._handles) == 0


# ---- threads ------------------------------------------------------------------------------------


def _in_threads(fn, count):
    results: list = [None] * count
    errors: list = []

    def work(i):
        try:
            results[i] = fn(i)
        except Exception as err:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_threads_solving_sparse_at_once_get_their_own_answers(backend, fresh_sparse_cache):
    data, rows, cols, n = poisson(12)
    b = np.linspace(-1.0, 1.0, n)
    solve = jax.jit(jax.value_and_grad(
        lambda v: jnp.sum(lx.linear_solve(lx.SparseCOOLinearOperator(v, rows, cols, (n, n)),
                                          jnp.asarray(b), lx.SparseLU(backend=backend)).value ** 2)))

    def work(i):
        out = []
        for j in range(6):
            v = data * (1.0 + 0.05 * i + 0.01 * j)
            val, _ = solve(jnp.asarray(v))
            x = spla.spsolve(sp.csc_matrix((v, (rows, cols)), shape=(n, n)), b)
            out.append((float(val), float(np.sum(x**2))))
        return out

    for out in _in_threads(work, 4):
        for got, want in out:
            assert got == pytest.approx(want, rel=1e-10)


def test_threads_solving_dense_at_once_get_their_own_answers(rng):
    mats = [rng.standard_normal((6, 6)) + 6 * np.eye(6) for _ in range(4)]
    b = rng.standard_normal(6)

    def work(i):
        out = []
        for j in range(10):
            a = mats[i] * (1.0 + 0.1 * j)
            x = lx.linear_solve(lx.MatrixLinearOperator(jnp.asarray(a)), jnp.asarray(b)).value
            out.append(np.max(np.abs(np.asarray(x) - np.linalg.solve(a, b))))
        return out

    for errs in _in_threads(work, 4):
        assert max(errs) < 1e-12


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_threads_asking_for_one_matrix_share_one_factorization(backend, fresh_sparse_cache):
    data, rows, cols, n = poisson(30)
    op = lx.SparseCOOLinearOperator(jnp.asarray(data), rows, cols, (n, n))
    solve = jax.jit(lambda b: lx.linear_solve(op, b, lx.SparseLU(backend=backend)).value)
    solve(jnp.zeros(n).at[0].set(1.0))  # compile (and factorize) once
    lx.SparseLU.clear_cache()
    sparse_solver.reset_counters()
    _in_threads(lambda i: solve(jnp.full(n, float(i + 1))), 4)
    assert lx.SparseLU.cache_info()["factorizations"][backend] == 1


# ---- memory returned, measured ------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
def test_clear_cache_returns_memory(backend):
    # 120 x 120 Poisson: each cached factorization holds several MiB; 16 of them are cached.
    res = run_script(
        f"""
        data, rows, cols, n = poisson(120)
        solve = jax.jit(lambda v: lx.linear_solve(lx.SparseCOOLinearOperator(v, rows, cols, (n, n)),
                                                  jnp.ones(n), lx.SparseLU(backend="{backend}")).value)
        rng = np.random.default_rng(0)
        # Warm up (compilation, the backend's own start-up), then start from an empty cache.
        jax.block_until_ready(solve(jnp.asarray(data)))
        lx.clear_caches()
        before = rss_mib()
        for i in range(16):
            jax.block_until_ready(solve(jnp.asarray(data * (1 + 0.1 * rng.random(data.shape[0])))))
        info = lx.SparseLU.cache_info()
        full = rss_mib()
        lx.clear_caches()
        cleared = rss_mib()
        print(json.dumps({{"before": before, "full": full, "cleared": cleared,
                           "entries": info["entries"], "bytes": info["bytes"],
                           "after": lx.cache_info()["sparse"]["entries"]}}))
        """
    )
    held = res["full"] - res["before"]
    returned = res["full"] - res["cleared"]
    assert res["entries"] == 16 and res["after"] == 0
    assert held > 40, res  # the factorizations really occupied memory
    # Most of what the cached factorizations held comes back (the compiled program and JAX's own
    # buffers stay; PARDISO's MKL keeps some of its pool).
    assert returned > 0.6 * held, res


@pytest.mark.slow
def test_eager_calls_over_many_shapes_stay_flat():
    # Eager dense solves over 12 shapes, caches shrunk to 6 entries so that every call evicts and
    # recompiles: memory after the second round and after the fifth must agree.
    res = run_script(
        """
        from linopx import _solve
        from linopx.autodiff import primitive
        from linopx._lru import LRUCache
        _solve._EAGER_SOLVES = LRUCache(6)
        primitive._TRACE_CACHE = LRUCache(6, max_bytes=1 << 20, weigh=primitive._TRACE_CACHE._weigh)
        rng = np.random.default_rng(0)
        readings = []
        for rnd in range(5):
            for n in range(2, 14):
                a = jnp.asarray(rng.standard_normal((n, n)) + n * np.eye(n))
                x = lx.linear_solve(lx.MatrixLinearOperator(a), jnp.ones(n)).value
                assert np.allclose(a @ x, 1.0)
            readings.append(rss_mib())
        print(json.dumps({"rss": readings, "eager": len(_solve._EAGER_SOLVES),
                          "traced": len(primitive._TRACE_CACHE)}))
        """
    )
    assert res["eager"] <= 6 and res["traced"] <= 6
    # 36 compilations between the readings; a leak of one compiled program per call (hundreds of
    # KiB each, with JAX's tracing state) would show as tens of MiB.
    assert res["rss"][-1] - res["rss"][1] < 25, res
