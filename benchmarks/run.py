"""Run the benchmark suites and write a report.

    python -m benchmarks                      # every suite, full sizes
    python -m benchmarks --quick              # small sizes, a smoke test of the whole pipeline
    python -m benchmarks --suites dense,sparse --out benchmarks/results
    python -m benchmarks --suites soak --out /tmp/soak   # the memory soak alone (about 10 min)
    python -m benchmarks --suites logdet --out /tmp/logdet   # the log-determinant suite alone
    python -m benchmarks --suites sharded --out /tmp/sharded # CG on 1-8 devices (a subprocess)

Writes `results.json` (raw medians in seconds, the machine, versions), `results.md` (the tables)
and PNG plots (`<suite>-<case>.png`: time against size, log-log, linopx and each alternative;
`ratios.png`: linopx / alternative for every case; `soak-memory.png`: resident memory against
call count) into `--out`. A run of some suites overwrites `results.json` and `results.md` there
with a report of those suites only; with `--merge` it replaces only those suites in the report
already there (a suite measured at another time says when under its table). Alternatives that
are not installed are skipped with a note in the report. A suite module may add
`report_notes(rows)` (Markdown lines under its table) and `plot(rows, out, plt)` (its own
figures).

A full run into the repository's `benchmarks/results` also writes the report into the
documentation: `docs/benchmark-results.md` (its tables, with the plots under them), which the
Benchmarks page includes, and the PNG plots in `docs/assets/benchmarks/`. `--docs-only` redoes
that from the report already in `--out`, running no suite; `--docs-dir DIR` writes the docs copy
for any run (into DIR), `--no-docs` for none.

    python -m benchmarks --docs-only          # docs copy of benchmarks/results, in seconds
"""

from __future__ import annotations

import argparse
import importlib.metadata

import json
import os
import platform
import re
import shutil
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SUITES = (
    "dense", "iterative", "single_thread", "sparse", "sparse_memory", "large_sparse", "logdet",
    "sharded", "soak",
)  # fmt: skip
# The repository's report, and its copy in the documentation (relative to the docs folder).
RESULTS = os.path.join(ROOT, "benchmarks", "results")
DOCS_PAGE = "benchmark-results.md"
DOCS_ASSETS = "assets/benchmarks"


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
    dates = results.get("suite_dates", {})
    for suite, rows in results["suites"].items():
        lines += [f"## {suite}", ""]
        if dates.get(suite, results["date"]) != results["date"]:
            lines += [f"Measured {dates[suite]}.", ""]
        lines += table_lines(rows) if rows else ["(no results)"]
        lines.append("")
        notes = getattr(importlib.import_module(f"benchmarks.{suite}"), "report_notes", None)
        if notes is not None and rows:
            lines += notes(rows)
    for suite, err in results["errors"].items():
        lines += [f"## {suite}: failed", "", "```", err.strip(), "```", ""]
    return "\n".join(lines)


def _suite_plots(suite: str, rows: list[dict], available: list[str]) -> list[tuple[str, str]]:
    """(file, alt text) of the suite's time-vs-size plots among `available`, in case order."""
    ordered, seen = [], set()
    for case in dict.fromkeys(r["case"] for r in rows):
        name = f"{suite}-{_slug(case)}.png"
        if name in available and name not in seen:
            ordered.append((name, f"{suite}: {case}, median time against problem size"))
            seen.add(name)
    for name in sorted(available):  # a suite's own figures (`plot` in its module), and the rest
        if name.startswith(f"{suite}-") and name not in seen:
            ordered.append((name, f"{suite}: {name[len(suite) + 1 : -4].replace('-', ' ')}"))
    return ordered


def docs_report(report: str, results: dict | None, available: list[str]) -> tuple[str, list[str]]:
    """The docs copy of a report: `report` (the text of results.md) without its title, headings one
    level down (the Benchmarks page puts them under its own), image links pointing into
    DOCS_ASSETS, and under each suite's table the plots of that suite, then the ratios chart.
    `results` (results.json, or None) gives the case names for the plots' alt text; `available`
    are the PNG files beside the report. Returns the Markdown and the PNG files it shows."""
    suites = (results or {}).get("suites", {})
    shown: list[str] = []

    def image(name: str, alt: str) -> str:
        if name not in shown:
            shown.append(name)
        return f"![{alt}]({DOCS_ASSETS}/{name})"

    def local_image(m: re.Match) -> str:
        alt, target = m.group(1), m.group(2)
        if target in available:
            return image(target, alt)
        return m.group(0)

    def plots_of(suite: str | None) -> list[str]:
        if suite is None:
            return []
        lines = []
        for name, alt in _suite_plots(suite, suites.get(suite, []), available):
            if name not in shown:
                lines += [image(name, alt), ""]
        while lines and out and not out[-1].strip():
            out.pop()  # one blank line between the table (or notes) and the plots
        return [""] + lines if lines else []

    body = report.splitlines()
    if body and body[0].startswith("# "):
        body = body[1:]
    out = [
        "<!-- Written by `python -m benchmarks` (benchmarks/run.py; `--docs-only` redoes it) from",
        "     the report in benchmarks/results/. Not to be edited by hand. -->",
    ]
    suite, fenced = None, False
    for line in body:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            if line.startswith("## "):
                out += plots_of(suite)
                name = line[3:].strip()
                suite = name if name in suites or name in SUITES else None
                line = "### " + name[:1].upper() + name[1:]
            else:
                line = "#" + line
        elif not fenced:
            line = re.sub(r"!\[([^\]]*)\]\(([^)/\s]+\.png)\)", local_image, line)
        out.append(line)
    out += plots_of(suite)
    if "ratios.png" in available and "ratios.png" not in shown:
        while out and not out[-1].strip():
            out.pop()
        out += [
            "",
            "### Every ratio",
            "",
            "linopx's time over each alternative's, every case and size (below 1: faster).",
            "",
            image("ratios.png", "linopx time / alternative's time for every case"),
        ]
    while out and not out[-1].strip():
        out.pop()
    return "\n".join(out) + "\n", shown


def write_docs(out: str, docs_dir: str) -> list[str]:
    """Write the docs copy of the report in `out` (results.md, results.json, PNG plots) into
    `docs_dir`: DOCS_PAGE, and the plots it shows in DOCS_ASSETS (whose old PNGs go). Returns
    the paths written."""
    with open(os.path.join(out, "results.md"), encoding="utf-8") as f:
        report = f.read()
    try:
        with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
    except FileNotFoundError:
        results = None
    available = sorted(n for n in os.listdir(out) if n.endswith(".png"))
    page, shown = docs_report(report, results, available)
    assets = os.path.join(docs_dir, *DOCS_ASSETS.split("/"))
    os.makedirs(assets, exist_ok=True)
    for name in os.listdir(assets):
        if name.endswith(".png") and name not in shown:
            os.remove(os.path.join(assets, name))
    written = []
    for name in shown:
        shutil.copyfile(os.path.join(out, name), os.path.join(assets, name))
        written.append(os.path.join(assets, name))
    with open(os.path.join(docs_dir, DOCS_PAGE), "w", encoding="utf-8") as f:
        f.write(page)
    return [os.path.join(docs_dir, DOCS_PAGE)] + written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--suites", default=",".join(SUITES), help="comma-separated: " + ", ".join(SUITES)
    )
    parser.add_argument(
        "--out", default=os.path.join("benchmarks", "results"), help="output folder"
    )
    parser.add_argument(
        "--docs-only",
        action="store_true",
        help="run no suite: only write the docs copy of the report already in --out",
    )
    parser.add_argument(
        "--docs-dir",
        default=None,
        help="docs folder for the report's copy (default: the repository's docs/, written after "
        "a full run into benchmarks/results)",
    )
    parser.add_argument("--no-docs", action="store_true", help="write no docs copy")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other suites of the report already in --out (with their dates) and "
        "replace only the suites run now",
    )
    args = parser.parse_args(argv)
    docs_dir = args.docs_dir or os.path.join(ROOT, "docs")
    if args.docs_only:
        if args.no_docs:
            parser.error("--docs-only and --no-docs contradict each other")
        if not os.path.isfile(os.path.join(args.out, "results.md")):
            parser.error(f"no report in {args.out} (results.md): run the suites first")
        written = write_docs(args.out, docs_dir)
        print(f"wrote {written[0]} and {len(written) - 1} plots from {args.out}")
        return 0
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
    results["suite_dates"] = {suite: results["date"] for suite in suites}
    previous = os.path.join(args.out, "results.json")
    if args.merge and os.path.isfile(previous):
        with open(previous) as f:
            old = json.load(f)
        if old.get("quick") != results["quick"]:
            parser.error("--merge: the report in --out was made in the other mode (--quick or not)")
        kept = {k: v for k, v in old["suites"].items() if k not in suites}
        results["suites"] = {**kept, **results["suites"]}
        results["suite_dates"] = {
            **{k: old.get("suite_dates", {}).get(k, old["date"]) for k in kept},
            **results["suite_dates"],
        }
        results["errors"] = {
            **{k: v for k, v in old.get("errors", {}).items() if k.split(":")[0] in kept},
            **results["errors"],
        }

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
    repository_report = os.path.realpath(args.out) == os.path.realpath(RESULTS)
    if not args.no_docs and (args.docs_dir or (repository_report and not args.quick)):
        written = write_docs(args.out, docs_dir)
        print(f"wrote {written[0]} and {len(written) - 1} plots (the docs copy)")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
