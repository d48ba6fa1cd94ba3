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


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (seconds) of each zero-argument callable, timed in interleaved rounds so
    that drifts in machine load affect all of them alike. The order rotates from round to round,
    so that no implementation always runs first (or right after the same other one)."""
    for fn in fns.values():
        for _ in range(warmup):
            block(fn())
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            block(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compile_times(
    makers: dict[str, Callable[[], Callable]], args: tuple, repeats: int = 5
) -> dict[str, float]:
    """Median time to trace, lower and compile a fresh jitted function (a new Python function each
    time, so nothing is reused from JAX's per-function caches), for each maker. The makers are
    interleaved, in an order that rotates from round to round, as in `interleaved`."""
    names = list(makers)
    times: dict[str, list[float]] = {k: [] for k in makers}
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = makers[name]()
            t0 = time.perf_counter()
            jax.jit(fn).lower(*args).compile()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fmt_time(t: float) -> str:
    if t < 1e-3:
        return f"{t * 1e6:.0f} µs"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


def row(case: str, size: str, times: dict[str, float], base: str = "linopx", **notes) -> dict:
    """One benchmark result: median seconds per implementation, `base` the one the ratios are of,
    and free-form notes (iteration counts, errors, memory). Sizes are strings such as "n=100"."""
    return {"case": case, "size": size, "base": base, "times": dict(times), "notes": notes}


def ratios(r: dict) -> dict[str, float]:
    """`base / other` for every other implementation in the row (below 1: the base is faster)."""
    t = r["times"]
    base = t.get(r["base"])
    if base is None:
        return {}
    return {f"{r['base']}/{k}": base / v for k, v in t.items() if k != r["base"] and v}


def table_lines(rows: list[dict]) -> list[str]:
    """The rows as a Markdown table: times, ratios and notes, one column per name seen."""
    impls: list[str] = []
    ratio_names: list[str] = []
    note_names: list[str] = []
    for r in rows:
        for k in r["times"]:
            if k not in impls:
                impls.append(k)
        for k in ratios(r):
            if k not in ratio_names:
                ratio_names.append(k)
        for k in r["notes"]:
            if k not in note_names:
                note_names.append(k)
    header = ["case", "size", *impls, *ratio_names, *note_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        rr = ratios(r)
        cells = [r["case"], r["size"]]
        cells += [fmt_time(r["times"][k]) if k in r["times"] else "" for k in impls]
        cells += [f"{rr[k]:.2f}" if k in rr else "" for k in ratio_names]
        cells += [str(r["notes"].get(k, "")) for k in note_names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def print_table(rows: list[dict]) -> None:
    print("\n".join(table_lines(rows)))


def print_suite(cases: Callable, quick: bool, notes: Callable | None = None) -> None:
    """Run every case of `cases(quick)` and print one table, then `notes(rows)` if given (the
    report notes of a suite script run on its own)."""
    rows = [r for _, thunk in cases(quick) for r in thunk()]
    print_table(rows)
    if notes is not None:
        print("\n".join(notes(rows)))


def suite_main(doc: str, cases: Callable, notes: list[str]) -> None:
    """The command line of a suite script: `--quick`, the notes (e.g. which alternative is not
    installed), then every case of `cases(quick)` and one table."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    args = parser.parse_args()
    for note in notes:
        print(note)
    rows = [r for _, thunk in cases(args.quick) for r in thunk()]
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, float64")
    print_table(rows)
