"""Render docs/benchmarks.md (and the trend plot beside the records) from docs/results/bench/*.json.

    python scripts/render_benchmarks.py            # write docs/benchmarks.md and docs/results/bench/trends.png
    python scripts/render_benchmarks.py --check    # exit 1 when docs/benchmarks.md is not what the records render to

The records are written by the benches (bench/record.py); historical ones were recovered from the figures
the project recorded before the benches wrote records, and say so. The document is output only: edit a
record or this script, never the document.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "docs" / "results" / "bench"
DOC = REPO / "docs" / "benchmarks.md"
PLOT = RECORDS / "trends.png"

# The benches in the document's order, with what each compares.
BENCHES = {
    "serving": ("Serving", "per-step admission against whole-batch grouping, side by side (`bench/serving.py`)"),
    "training": ("Training rollouts", "GRPO steps with TRL's rollout against ours, alternating (`bench/training.py`)"),
    "decode_step": ("Decode step", "one decode step through the model's forward pass against the fused step (`bench/decode_step.py`)"),
    "generation": ("Generation", "the batched transformers backend against a one-prompt-one-sample loop (`bench/generation.py`)"),
    "evaluation": ("Evaluation", "the batched harness against per-question evaluation (`bench/evaluation.py`)"),
    "synthesis": ("Synthesis", "items per second and the knowledge base's load time (`bench/synthesis.py`)"),
    "pipeline": ("Pipeline", "the tiny preset's wall time, stage work and orchestration overhead (`bench/pipeline.py`)"),
    "dead_dependencies": ("Dead dependencies", "how long each client takes to name a stopped or hung dependency (`bench/dead_dependencies.py`)"),
}


def load_records(folder: Path = RECORDS) -> list[dict[str, Any]]:
    records = []
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        for key in ("bench", "date", "commit", "figures"):
            if key not in record:
                raise SystemExit(f"{path}: record without field {key!r}")
        if record["bench"] not in BENCHES:
            raise SystemExit(f"{path}: unknown bench {record['bench']!r} (known: {', '.join(BENCHES)})")
        record["_file"] = path.name
        records.append(record)
    # newest first within a bench; the file name breaks ties between records of one day
    return sorted(records, key=lambda r: (str(r["date"]), r["_file"]), reverse=True)


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def flatten(figures: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.")
        elif isinstance(value, list) and len(value) > 8:
            rows.append((name, f"{len(value)} values"))
        else:
            rows.append((name, value))
    return rows


def table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    aligns = ["---:" if any(isinstance(r[i], (int, float)) and not isinstance(r[i], bool) for r in rows) else "---"
              for i in range(len(columns))]
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(aligns) + "|",
            *("| " + " | ".join(number(cell) for cell in row) + " |" for row in rows)]


def machine_line(machine: dict[str, Any]) -> str:
    parts = [machine.get("cpu") or machine.get("description") or "CPU model not recorded"]
    if machine.get("cpu") and machine.get("description"):
        parts.append(machine["description"])
    if machine.get("cores") and not machine.get("description"):
        parts.append(f"{machine['cores']} cores")
    if machine.get("flags"):
        parts.append("flags " + " ".join(machine["flags"]))
    if machine.get("memory_gib"):
        parts.append(f"{machine['memory_gib']} GiB")
    return ", ".join(parts)


def render_record(record: dict[str, Any]) -> list[str]:
    date = str(record["date"])[:10]
    kind = "historical, recovered from the project's notes" if record.get("historical") else "measured"
    title = record.get("title") or ""
    lines = [f"### {date}, commit {record['commit']}{': ' + title if title else ''}", "",
             f"- {kind}; machine: {machine_line(record.get('machine', {}))}"]
    if record.get("command"):
        lines.append(f"- command: `{record['command']}`")
    if record.get("dirty"):
        lines.append("- the tree had uncommitted changes")
    if record.get("note"):
        lines.append(f"- {record['note']}")
    lines.append("")
    tables = record.get("tables") or [{"title": "", "columns": ["figure", "value"], "rows": flatten(record["figures"])}]
    for t in tables:
        if t.get("title"):
            lines += [t["title"], ""]
        lines += table(t["columns"], [list(row) for row in t["rows"]]) + [""]
    return lines


def trends(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Headline figures with at least three records: their runs, oldest first."""
    series = defaultdict(list)
    for record in reversed(records):
        if record.get("headline"):
            series[(record["bench"], record["headline"]["name"])].append(record)
    return {key: runs for key, runs in series.items() if len(runs) >= 3}


def render(records: list[dict[str, Any]]) -> str:
    by_bench = defaultdict(list)
    for record in records:
        by_bench[record["bench"]].append(record)
    lines = ["# Benchmarks", "",
             "Every speed figure the project has measured, newest first, rendered by `make benchmarks-doc` from the JSON",
             "records in [`docs/results/bench/`](results/bench/). Benches measure side by side in one run and report",
             "ratios; each record names its commit, date, machine and command. Do not edit this file: add a record",
             "(a bench writes one) and render again. How to run the benches: [development.md](development.md#benches).",
             "", "## Latest headline figures", ""]
    rows = []
    for bench in BENCHES:
        latest = next((r for r in by_bench.get(bench, []) if r.get("headline")), None)
        if latest:
            h = latest["headline"]
            rows.append([BENCHES[bench][0], h["name"], h["value"], h.get("target", ""), str(latest["date"])[:10], latest["commit"]])
    lines += table(["bench", "figure", "value", "target", "date", "commit"], rows) + [""]
    series = trends(records)
    if series:
        lines += ["## Trends", "", f"![headline figures over time](results/bench/{PLOT.name})", ""]
        for (bench, name), runs in series.items():
            lines.append(f"- {BENCHES[bench][0]}, {name}: " + ", ".join(
                f"{number(r['headline']['value'])} ({str(r['date'])[:10]}, {r['commit']})" for r in runs))
        lines.append("")
    for bench, (title, what) in BENCHES.items():
        if not by_bench.get(bench):
            continue
        lines += [f"## {title}", "", f"{what[0].upper()}{what[1:]}.", ""]
        for record in by_bench[bench]:
            lines += render_record(record)
    return "\n".join(lines).rstrip() + "\n"


def plot(records: list[dict[str, Any]], path: Path = PLOT) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = trends(records)
    if not series:
        return
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.6 * len(series)), squeeze=False)
    for ax, ((bench, name), runs) in zip(axes[:, 0], series.items()):
        labels = [f"{str(r['date'])[5:10]}\n{r['commit']}" for r in runs]
        ax.plot(range(len(runs)), [r["headline"]["value"] for r in runs], marker="o")
        ax.set_xticks(range(len(runs)), labels, fontsize=7)
        ax.set_title(f"{BENCHES[bench][0]}: {name}", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only check that docs/benchmarks.md is current.")
    args = parser.parse_args(argv)
    records = load_records()
    text = render(records)
    if args.check:
        if DOC.exists() and DOC.read_text(encoding="utf-8") == text:
            return 0
        print(f"{DOC.relative_to(REPO)} is stale: run `make benchmarks-doc`", file=sys.stderr)
        return 1
    DOC.write_text(text, encoding="utf-8")
    plot(records)
    print(f"wrote {DOC.relative_to(REPO)} from {len(records)} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
