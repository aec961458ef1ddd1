"""Write BENCHMARKS.md from the suite's results (``benchmarks/suite.py``): tables, ratios with spread, plots.

The file is generated; the words that explain a result (where headrace is behind and the measured reason)
live in ``benchmarks/analysis/<name>.md`` and are included under that result's section.

For every case, the best headrace configuration (by median) is compared with every peer and reference point
that ran the same case: the ratio headrace/peer of the medians, with the lowest and highest ratio over all
pairs of repetitions. The verdict says *ahead* or *behind* only when the whole spread is on one side of 1
(and by more than 5%); otherwise *even* (within the spread between repetitions).

    >>> from suite import Measure
    >>> verdict(Measure("c", "h", "tokens/s", [10.0, 11.0], role="headrace"), Measure("c", "p", "tokens/s", [5.0, 6.0]))
    ('ahead', 1.9090909090909092, 1.6666666666666667, 2.2)
"""

from __future__ import annotations

import math
import shutil
from collections import defaultdict
from pathlib import Path

from suite import Measure, Result, ratio

HERE = Path(__file__).resolve().parent
ANALYSIS = HERE / "analysis"


def load(folder: Path, order: list[str] | None = None) -> tuple[list[Result], dict[str, str]]:
    """The results in ``folder`` (in ``order`` first), and the workloads that failed with why."""
    results = [Result.read(p) for p in sorted(folder.glob("*.json"))]
    rank = {name: i for i, name in enumerate(order or [])}
    results.sort(key=lambda r: (rank.get(r.name, len(rank)), r.name))
    failed = {p.stem: p.read_text().strip() for p in sorted(folder.glob("*.failed"))}
    return results, failed


def verdict(headrace: Measure, other: Measure) -> tuple[str, float, float, float]:
    """``(ahead|behind|even, ratio, low, high)`` of headrace against another contender on the same metric."""
    r, lo, hi = ratio(headrace, other)
    if math.isnan(r):
        return "n/a", r, lo, hi

    def inverse(x: float) -> float:
        return 1 / x if x else math.inf  # a time or wait of 0 is infinitely better than any other

    better_lo, better_hi = (lo, hi) if headrace.higher_is_better else (inverse(hi), inverse(lo))  # > 1: ours better
    if better_lo > 1.05:
        return "ahead", r, lo, hi
    if better_hi < 1 / 1.05:
        return "behind", r, lo, hi
    return "even", r, lo, hi


def comparisons(result: Result) -> list[tuple[Measure, Measure]]:
    """(best headrace measure, other measure) for every case and metric with both."""
    groups: dict[tuple[str, str], list[Measure]] = defaultdict(list)
    for m in result.measures:
        groups[(m.case, m.metric)].append(m)
    pairs = []
    for ms in groups.values():
        ours = [m for m in ms if m.role == "headrace"]
        if not ours:
            continue
        best = max(ours, key=lambda m: m.median if m.higher_is_better else -m.median)
        pairs += [(best, m) for m in ms if m.role != "headrace"]
    return pairs


def strongest(measures: list[Measure]) -> Measure | None:
    """The measure with the best median (highest, or lowest where lower is better); None if there is none."""
    if not measures:
        return None
    return max(measures, key=lambda m: m.median if m.higher_is_better else -m.median)


def headline_rows(results: list[Result], per_workload: int = 3) -> list[list[str]]:
    """The headline comparisons: for each workload, its first ``per_workload`` metrics, each from the first case
    that measures it, the best headrace configuration against the strongest peer and the strongest reference
    point (ratio with spread, verdict). A metric whose comparison repeats the one before (rows/s beside
    tokens/s of the same run) is left out.

    >>> r = Result("text", "t", quick=True, machine={}, measures=[
    ...     Measure("pack", "headrace w0", "tokens/s", [9.0, 10.0], role="headrace"),
    ...     Measure("pack", "headrace w2", "tokens/s", [19.0, 20.0], role="headrace"),
    ...     Measure("pack", "HF", "tokens/s", [4.0, 5.0]),
    ...     Measure("pack", "HF fast", "tokens/s", [9.0, 10.0]),
    ...     Measure("pack", "tokenizer", "tokens/s", [20.0, 21.0], role="reference"),
    ...     Measure("other", "headrace", "tokens/s", [1.0], role="headrace"),
    ...     Measure("other", "HF", "tokens/s", [1.0])])
    >>> for row in headline_rows([r]):
    ...     print(" | ".join(row))
    text | pack | tokens/s | headrace w2 | HF fast | 2.05 [1.90–2.22] | ahead | tokenizer | 0.951 [0.905–1.00] | even
    """
    rows = []
    for r in results:
        cases: dict[str, list[Measure]] = defaultdict(list)
        for m in r.measures:
            cases[m.case].append(m)
        mine: list[list[str]] = []
        for case, ms in cases.items():
            for metric in dict.fromkeys(m.metric for m in ms):
                row = headline_row(r.name, case, [m for m in ms if m.metric == metric])
                if row is None or metric in (x[2] for x in mine):
                    continue
                if mine and mine[-1][1] == case and mine[-1][3:] == row[3:]:
                    continue  # the same comparison under another unit
                mine.append(row)
        rows += mine[:per_workload]
    return rows


def headline_row(workload: str, case: str, measures: list[Measure]) -> list[str] | None:
    """One headline row for one case and metric (see :func:`headline_rows`); None without a headrace measure."""
    ours = strongest([m for m in measures if m.role == "headrace"])
    if ours is None:
        return None
    row = [workload, case, ours.metric, ours.contender]
    for role in ("peer", "reference"):
        other = strongest([m for m in measures if m.role == role])
        if other is None:
            row += ["–", "", ""]
            continue
        v, x, lo, hi = verdict(ours, other)
        row += [other.contender, f"{fmt(x)} [{fmt(lo)}–{fmt(hi)}]", v]
    return row


def headline(results: list[Result]) -> list[str]:
    """The headline table: :func:`headline_rows` as Markdown, under a caption naming the run's date and machine."""
    if not results:
        return []
    dates = sorted(r.date for r in results)
    m = results[0].machine
    caption = (
        f"The main comparisons of each workload (its first metrics, each from the first case that measures "
        f"it), from the run of {dates[0][:10]} on "
        f"{m.get('cpu', 'an unknown CPU')}, {m.get('cores', '?')} cores: the best headrace configuration against "
        "the strongest peer and the strongest reference point (a physical ceiling or floor such as the tokenizer "
        "alone or a memmap loop). Ratios and verdicts as in the summary below; every case follows it."
    )
    table = [
        "| workload | case | metric | best headrace | strongest peer | ratio [spread] | | reference | "
        "ratio [spread] | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    table += ["| " + " | ".join(row) + " |" for row in headline_rows(results)]
    return ["## Headline", "", caption, "", *table, ""]


def ratio_lines(result: Result) -> list[str]:
    """One line per comparison: the ratio headrace/peer with its spread and the verdict (what the runner prints)."""
    lines = []
    for ours, other in comparisons(result):
        v, x, lo, hi = verdict(ours, other)
        lines.append(f"  {ours.case} | {ours.metric} | {ours.contender} / {other.contender}: "
                     f"{fmt(x)} [{fmt(lo)}-{fmt(hi)}] {v}")  # fmt: skip
    return lines


def fmt(x: float) -> str:
    """A number with three significant digits and thousands separators."""
    if math.isnan(x):
        return "n/a"
    if x == 0 or abs(x) >= 100:
        return f"{x:,.0f}"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:,.{digits}f}"


def summary_plot(rows: list[tuple[str, str, float, float, float, bool]], path: Path) -> bool:
    """Horizontal bars: how many times better headrace is (log scale), with the spread; whether it drew."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels, centre, low, high = [], [], [], []
    for label, _, r, lo, hi, higher in rows:
        if math.isnan(r) or r <= 0 or lo <= 0 or math.isinf(hi):
            continue
        b, blo, bhi = (r, lo, hi) if higher else (1 / r, 1 / hi, 1 / lo)
        labels.append(label)
        centre.append(b)
        low.append(b - blo)
        high.append(bhi - b)
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(labels) + 1.2))
    colors = ["tab:green" if c - lo > 1.05 else "tab:red" if c + hi < 1 / 1.05 else "tab:gray"
              for c, lo, hi in zip(centre, low, high, strict=True)]  # fmt: skip
    ax.barh(range(len(labels)), centre, xerr=[low, high], color=colors, capsize=2)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("headrace advantage (x, log scale; > 1: headrace better; bars: median, whiskers: spread)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def machine_lines(results: list[Result]) -> list[str]:
    m = results[0].machine
    versions: dict[str, str] = {}
    for r in results:
        versions.update(r.machine.get("versions", {}))
    loads = ", ".join(f"{r.name} {r.machine.get('load_average', 'n/a')}" for r in results)
    return [
        f"- **Machine:** {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; {m['os']}; Python {m['python']}.",
        "- **Versions:** " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
        f"- **Load average** when each workload started (other processes skew timings): {loads}.",
    ]


def write(folder: Path, path: Path, order: list[str] | None = None) -> Path:
    """Write the report for the results in ``folder`` to ``path``; plots go to ``path.parent/docs/benchmarks``."""
    results, failed = load(folder, order)
    plots = path.parent / "docs" / "benchmarks"
    lines = ["# Benchmarks", ""]
    lines += [
        "headrace against its peers, on the same data and machine, in the same run. Generated by "
        "`python -m benchmarks` (`make bench`) from the results in `.bench/results`; do not edit by hand: the "
        "explanations live in `benchmarks/analysis/`. Earlier runs' detailed write-ups: `benchmarks/HISTORY.md`.",
        "",
    ]
    lines += headline(results)
    lines += run_lines(results, failed)
    lines += summary(results, plots, path.parent)
    for r in results:
        lines += section(r, folder, plots, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def run_lines(results: list[Result], failed: dict[str, str]) -> list[str]:
    """Quick mode, the run's dates and machine, how to read a ratio, and the workloads that failed."""
    lines = []
    if any(r.quick for r in results):
        lines += [
            "**Quick mode** (`--quick`): small sizes and 1-2 repetitions, a smoke run; the numbers mean little.",
            "",
        ]
    if not results:
        lines += ["No results.", ""]
    else:
        dates = sorted(r.date for r in results)
        lines += [f"- **Run:** {dates[0]} to {dates[-1]}, {sum(r.seconds for r in results) / 60:.0f} minutes."]
        lines += [*machine_lines(results), ""]
    lines += [
        "Ratios are headrace/peer of the medians; the brackets give the lowest and highest ratio over all pairs of "
        "repetitions. For rates (rows/s, tokens/s) above 1 is better for headrace, for times and memory below 1. "
        "*ahead*/*behind*: the whole spread is on that side (by more than 5%); *even*: it is not. For each case the "
        "best headrace configuration is compared (its name in the table).",
        "",
    ]
    if failed:
        lines += ["**Failed in this run:** " + "; ".join(f"`{k}` ({v})" for k, v in failed.items()), ""]
    return lines


def summary(results: list[Result], plots: Path, root: Path) -> list[str]:
    """The summary: one row per result, case, metric and peer; and its plot (drawn into ``plots``)."""
    bars: list[tuple[str, str, float, float, float, bool]] = []
    table = ["| workload | case | metric | headrace | against | ratio [spread] | |", "|---|---|---|---|---|---|---|"]
    for r in results:
        for ours, other in comparisons(r):
            v, x, lo, hi = verdict(ours, other)
            against = other.contender + (" (reference)" if other.role == "reference" else "")
            table.append(f"| {r.name} | {ours.case} | {ours.metric} | {ours.contender} | {against} | "
                         f"{fmt(x)} [{fmt(lo)}–{fmt(hi)}] | {v} |")  # fmt: skip
            bars.append((f"{r.name}: {ours.case[:48]} vs {other.contender[:24]}", v, x, lo, hi,
                         ours.higher_is_better))  # fmt: skip
    lines = ["## Summary", "", *table, ""]
    if summary_plot(bars, plots / "summary.png"):
        lines += [f"![headrace advantage per case]({(plots / 'summary.png').relative_to(root)})", ""]
    return lines


def section(r: Result, folder: Path, plots: Path, root: Path) -> list[str]:
    """One result's section: its notes, every measure, its plots (copied into ``plots``) and its analysis."""
    lines = [f"## {r.title}", "", f"`{r.name}`: {r.date}, {r.seconds:.0f} s" + (", quick" if r.quick else ""), ""]
    lines += [f"- {n}" for n in r.notes] + ([""] if r.notes else [])
    lines += ["| case | contender | metric | median | [min–max] | n |", "|---|---|---|---|---|---|"]
    for m in r.measures:
        tag = {"headrace": "", "peer": "", "reference": " *(ref.)*"}[m.role]
        who = f"**{m.contender}**" if m.role == "headrace" else m.contender + tag
        lines.append(f"| {m.case} | {who} | {m.metric} | {fmt(m.median)} | "
                     f"[{fmt(m.spread[0])}–{fmt(m.spread[1])}] | {len(m.values)} |")  # fmt: skip
    lines.append("")
    for plot in r.plots:
        src = folder / plot
        if src.exists():
            dst = plots / f"{r.name}-{Path(plot).name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            lines += [f"![{r.name}: {Path(plot).stem}]({dst.relative_to(root)})", ""]
    analysis = ANALYSIS / f"{r.name}.md"
    if analysis.exists():
        lines += [analysis.read_text().strip(), ""]
    return lines
