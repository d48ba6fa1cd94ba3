"""Timing helpers shared by the benchmark scripts: warm-up, interleaved repetitions, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def block(x):
    return jax.tree_util.tree_map(
        lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x
    )


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 2) -> dict[str, float]:
    """Median wall time (seconds) of each zero-argument callable, timed in interleaved rounds so
    that drifts in machine load affect all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compile_time(make_fn: Callable[[], Callable], args: tuple, repeats: int = 5) -> float:
    """Median time to trace, lower and compile a fresh jitted function (a new Python function each
    time, so nothing is reused from JAX's per-function caches)."""
    out = []
    for _ in range(repeats):
        fn = make_fn()
        t0 = time.perf_counter()
        jax.jit(fn).lower(*args).compile()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print(" | ".join(c.ljust(widths[c]) for c in columns))
    print("-+-".join("-" * widths[c] for c in columns))
    for r in rows:
        print(" | ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
