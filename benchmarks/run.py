"""Run the benchmark suites and write a report.

    python -m benchmarks                      # every suite, full sizes
    python -m benchmarks --quick              # small sizes, a smoke test of the whole pipeline
    python -m benchmarks --suites dense,sparse --out benchmarks/results
    python -m benchmarks --suites soak --out /tmp/soak   # the memory soak alone (about 10 min)
    python -m benchmarks --suites logdet --out /tmp/logdet   # the log-determinant suite alone

Writes `results.json` (raw medians in seconds, the machine, versions), `results.md` (the tables)
and PNG plots (`<suite>-<case>.png`: time against size, log-log, linopx and each alternative;
`ratios.png`: linopx / alternative for every case; `soak-memory.png`: resident memory against
call count) into `--out`. A run of some suites overwrites `results.json` and `results.md` there
with a report of those suites only. Alternatives that are not installed are skipped with a note in
the report. A suite module may add `report_notes(rows)` (Markdown lines under its table) and
`plot(rows, out, plt)` (its own figures).
"""

from __future__ import annotations

import argparse
import importlib.metadata

import json
import os
import platform
import re
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUITES = ("dense", "iterative", "sparse", "logdet", "soak")


def machine() -> dict:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        memory = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "unknown"
    versions = {}
    for name in ("jax", "jaxlib", "equinox", "numpy", "scipy", "lineax", "pypardiso", "klujax"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "versions": versions,
    }


class Progress:
    """A one-line text progress bar on stderr (no dependency)."""

    def __init__(self, total: int, width: int = 30):
        self.total, self.width, self.done, self.start = total, width, 0, time.perf_counter()

    def show(self, label: str) -> None:
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:6.0f}s  {label[:50]:<50}")
        sys.stderr.flush()

    def step(self, label: str) -> None:
        self.done += 1
        self.show(label)

    def close(self) -> None:
        sys.stderr.write("\n")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _size_value(size: str) -> float | None:
    """The leading number of a size label ("n=100" -> 100, "300^2" -> 90000, "400x100" -> 40000)."""
    m = re.fullmatch(r"\s*(?:n=)?(\d+)(?:\^(\d))?(?:x(\d+))?\s*", size)
    if not m:
        return None
    value = float(m.group(1))
    if m.group(2):
        value **= int(m.group(2))
    if m.group(3):
        value *= float(m.group(3))
    return value


def plot(results: dict, out: str) -> list[str]:
    """Log-log time-vs-size plots for cases measured at two or more sizes, and one bar chart of
    ratios. Returns the written file names; none if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for suite, rows in results["suites"].items():
        own = getattr(importlib.import_module(f"benchmarks.{suite}"), "plot", None)
        if own is not None:
            written += own(rows, out, plt)
        by_case: dict[str, list[dict]] = {}
        for r in rows:
            by_case.setdefault(r["case"], []).append(r)
        for case, rs in by_case.items():
            points = [(v, r) for r in rs if (v := _size_value(r["size"])) is not None]
            if len(points) < 2:
                continue
            points.sort(key=lambda p: p[0])
            fig, ax = plt.subplots(figsize=(5, 3.6))
            impls = []
            for _, r in points:
                impls += [k for k in r["times"] if k not in impls]
            for impl in impls:
                xs = [v for v, r in points if impl in r["times"]]
                ys = [r["times"][impl] for _, r in points if impl in r["times"]]
                ax.loglog(xs, ys, "o-", label=impl, linewidth=2 if impl == "linopx" else 1)
            ax.set_xlabel("problem size (unknowns or entries)")
            ax.set_ylabel("median time (s)")
            ax.set_title(f"{suite}: {case}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            name = f"{suite}-{_slug(case)}.png"
            fig.savefig(os.path.join(out, name), dpi=110)
            plt.close(fig)
            written.append(name)
    labels, values = [], []
    for suite, rows in results["suites"].items():
        for r in rows:
            base = r["times"].get(r["base"])
            for k, v in r["times"].items():
                if k != r["base"] and base and v and not k.startswith(r["base"]):
                    labels.append(f"{suite}: {r['case']} {r['size']} vs {k}")
                    values.append(base / v)
    if values:
        fig, ax = plt.subplots(figsize=(8, 0.28 * len(values) + 1.2))
        ax.barh(
            range(len(values)), values, color=["tab:green" if v <= 1 else "tab:red" for v in values]
        )
        ax.axvline(1.0, color="black", linewidth=1)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("linopx time / alternative's time (below 1: linopx is faster)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(os.path.join(out, "ratios.png"), dpi=110)
        plt.close(fig)
        written.append("ratios.png")
    return written


def markdown(results: dict) -> str:
    from benchmarks._timing import table_lines

    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    lines = [
        "# linopx benchmark report",
        "",
        f"Measured {results['date']} on {m['cpu']} ({m['cores']} cores, {m['memory']}), "
        f"JAX backend `{m['jax_backend']}`, {m['platform']}, Python {m['python']}.",
        f"Versions: {versions}.",
        f"Mode: {'quick' if results['quick'] else 'full'}. Each time is the median of interleaved "
        "repetitions after warm-up; ratios are linopx / alternative (below 1: linopx is faster).",
        "",
    ]
    missing = [k for k, v in m["versions"].items() if v is None]
    if missing:
        lines += [f"Not installed, so skipped: {', '.join(missing)}.", ""]
    for suite, rows in results["suites"].items():
        lines += [f"## {suite}", ""]
        lines += table_lines(rows) if rows else ["(no results)"]
        lines.append("")
        notes = getattr(importlib.import_module(f"benchmarks.{suite}"), "report_notes", None)
        if notes is not None and rows:
            lines += notes(rows)
    for suite, err in results["errors"].items():
        lines += [f"## {suite}: failed", "", "```", err.strip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--suites", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES)
    )
    parser.add_argument(
        "--out", default=os.path.join("benchmarks", "results"), help="output folder"
    )
    args = parser.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; choose from {', '.join(SUITES)}")
    os.makedirs(args.out, exist_ok=True)

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "quick": args.quick,
        "machine": machine(),
        "suites": {},
        "errors": {},
    }
    plans = []
    for suite in suites:
        module = importlib.import_module(f"benchmarks.{suite}")
        plans.append((suite, module.cases(args.quick)))
    progress = Progress(sum(len(c) for _, c in plans))
    for suite, cases in plans:
        rows = results["suites"].setdefault(suite, [])
        for label, thunk in cases:
            progress.show(f"{suite}: {label}")
            try:
                rows.extend(thunk())
            except Exception:  # a failing case is reported, and the other cases still run
                results["errors"][f"{suite}: {label}"] = traceback.format_exc()
            progress.step(f"{suite}: {label}")
    progress.close()

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report + "\n")
    plots = plot(results, args.out)
    print(report)
    print(
        f"wrote {args.out}/results.json, results.md" + (f" and {len(plots)} plots" if plots else "")
    )
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
