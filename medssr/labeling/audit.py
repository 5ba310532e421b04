"""How good are the pseudo-labels? Precision against the knowledge-base key, per agreement bucket.

The paper calls its self-consistency labels high-quality; where synthesis kept the knowledge-base
answer (``metadata["kb_answer"]``, or the item's ``answer``), we measure it: precision of the
majority label overall, among kept items, and per agreement bucket (kept or not, so the bounds can
be chosen from data), plus the yield of the filter.

With recovery on, a question's samples vote in two ways: free-form answers (read from the
completion) and recovered ones (the letter-constrained second turn for samples that stated none).
The label is the majority over both; the audit also reports each kind alone, as if it had been the
only vote (same selection rule), so the value of the second pass is measured, not assumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medssr.answers import Vote
from medssr.data import MCQItem
from medssr.labeling.selection import SelectionRule
from medssr.storage import write_text

DEFAULT_BUCKET_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
VOTE_SOURCES = {"free": "free-form votes", "recovered": "recovered votes", "both": "both together"}


def kb_key(item: MCQItem) -> str | None:
    """The knowledge-base answer of an item: ``metadata["kb_answer"]`` first, else ``answer``."""
    key = item.metadata.get("kb_answer")
    if isinstance(key, str) and key.strip().upper() in item.options:
        return key.strip().upper()
    return item.answer


@dataclass(frozen=True)
class Outcome:
    """One question's vote, as the audit sees it."""

    item_id: str
    key: str | None
    label: str | None
    agreement: float
    parsed: int
    kept: bool
    reason: str | None
    sources: Mapping[str, Vote] = field(default_factory=dict)
    """The vote of each kind of answer alone and together (keys of VOTE_SOURCES), when recovery ran."""


def _bucket_names(edges: tuple[float, ...]) -> list[tuple[str, float, float]]:
    """[lo, hi) buckets between consecutive edges, and a closed bucket for unanimous votes (= 1)."""
    if list(edges) != sorted(edges) or len(edges) < 2 or edges[0] != 0.0 or edges[-1] != 1.0:
        raise ValueError(f"bucket edges must rise from 0.0 to 1.0, got {edges}")
    buckets = [(f"[{lo:.2f}, {hi:.2f})", lo, hi) for lo, hi in zip(edges, edges[1:])]
    return buckets + [("= 1.00", 1.0, float("inf"))]


def _precision(outcomes: list[Outcome]) -> dict:
    keyed = [o for o in outcomes if o.key is not None and o.label is not None]
    correct = sum(o.label == o.key for o in keyed)
    return {"n": len(keyed), "correct": correct, "precision": (correct / len(keyed)) if keyed else None}


def _section(outcomes: list[Outcome], edges: tuple[float, ...]) -> dict:
    """Yield and precision of one set of outcomes: overall, kept, per agreement bucket."""
    total = len(outcomes)
    kept = [o for o in outcomes if o.kept]
    voted = [o for o in outcomes if o.label is not None]
    reasons: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.reason:
            reasons[outcome.reason] = reasons.get(outcome.reason, 0) + 1
    buckets = []
    for name, lo, hi in _bucket_names(edges):
        inside = [o for o in voted if lo <= o.agreement < hi]
        buckets.append({"bucket": name, "lo": lo, "hi": min(hi, 1.0), "items": len(inside),
                        "kept": sum(o.kept for o in inside), **_precision(inside)})
    return {
        "voted": len(voted),
        "kept": len(kept),
        "yield": (len(kept) / total) if total else 0.0,
        "dropped": reasons,
        "parsed_answers": sum(o.parsed for o in outcomes),
        "precision_voted": _precision(voted),
        "precision_kept": _precision(kept),
        "buckets": buckets,
    }


def _as_if_alone(outcome: Outcome, vote: Vote, rule: SelectionRule) -> Outcome:
    reason = rule.drop_reason(vote)
    return Outcome(outcome.item_id, outcome.key, vote.label, vote.agreement, vote.parsed, reason is None, reason)


def audit(
    outcomes: list[Outcome], min_agreement: float, max_agreement: float, edges=DEFAULT_BUCKET_EDGES, min_parsed: int = 1,
    by_order: Mapping[str, list[Outcome]] | None = None,
) -> dict:
    """Yield and, where keys exist, precision overall / kept / per agreement bucket, for the deciding
    vote, (``by_source``) for each kind of vote alone under the same selection rule and (``by_order``) for
    the votes over fixed and permuted option orders, when both were sampled."""
    edges = tuple(edges)
    rule = SelectionRule(min_agreement, max_agreement, min_parsed)
    report = {
        "items": len(outcomes),
        **_section(outcomes, edges),
        "keyed_items": sum(o.key is not None for o in outcomes),
        "min_agreement": min_agreement,
        "max_agreement": max_agreement,
        "min_parsed": min_parsed,
    }
    sources = [name for name in VOTE_SOURCES if outcomes and all(name in o.sources for o in outcomes)]
    report["by_source"] = {
        name: _section([_as_if_alone(o, o.sources[name], rule) for o in outcomes], edges) for name in sources
    }
    report["by_order"] = {name: _section(found, edges) for name, found in (by_order or {}).items()}
    return report


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def to_markdown(report: dict) -> str:
    lines = [
        "# Pseudo-label audit",
        "",
        f"Items {report['items']}, voted (a single winning letter) {report['voted']}, kept {report['kept']} "
        f"(yield {_fmt(report['yield'])}) with {report['min_agreement']} <= agreement <= {report['max_agreement']}.",
        "Dropped: " + (", ".join(f"{k} {v}" for k, v in sorted(report["dropped"].items())) or "none") + ".",
        f"Items with a knowledge-base key: {report['keyed_items']}.",
        "",
        "| set | keyed items | correct | precision |",
        "|---|---:|---:|---:|",
    ]
    for name, key in (("all voted", "precision_voted"), ("kept", "precision_kept")):
        p = report[key]
        lines.append(f"| {name} | {p['n']} | {p['correct']} | {_fmt(p['precision'])} |")
    lines += ["", "| agreement | items | kept | keyed | correct | precision |", "|---|---:|---:|---:|---:|---:|"]
    for b in report["buckets"]:
        lines.append(f"| {b['bucket']} | {b['items']} | {b['kept']} | {b['n']} | {b['correct']} | {_fmt(b['precision'])} |")
    by_source = report.get("by_source") or {}
    if by_source:
        lines += [
            "",
            "## Free-form and recovered votes",
            "",
            "Each kind of vote alone, as if it were the only one (same selection rule), and both together (the labels used).",
            "",
            "| votes | answers | voted | kept | yield | precision (voted) | precision (kept) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, section in by_source.items():
            lines.append(
                f"| {VOTE_SOURCES[name]} | {section['parsed_answers']} | {section['voted']} | {section['kept']} | {_fmt(section['yield'])} "
                f"| {_fmt(section['precision_voted']['precision'])} ({section['precision_voted']['n']}) "
                f"| {_fmt(section['precision_kept']['precision'])} ({section['precision_kept']['n']}) |"
            )
        lines += ["", "| agreement | " + " | ".join(f"{VOTE_SOURCES[n]}: items, precision" for n in by_source) + " |",
                  "|---|" + "---:|" * len(by_source)]
        for index, bucket in enumerate(report["buckets"]):
            cells = []
            for section in by_source.values():
                b = section["buckets"][index]
                cells.append(f"{b['items']}, {_fmt(b['precision'])}")
            lines.append(f"| {bucket['bucket']} | " + " | ".join(cells) + " |")
    by_order = report.get("by_order") or {}
    if by_order:
        lines += [
            "",
            "## Fixed and permuted option orders",
            "",
            "The same questions voted on twice: every sample seeing the options in the question's order, and each sample in its own "
            "order with its choice mapped back to the question's letters (a vote that cannot favour a position).",
            "",
            "| option order | voted | kept | yield | precision (voted) | precision (kept) |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, section in by_order.items():
            lines.append(
                f"| {name} | {section['voted']} | {section['kept']} | {_fmt(section['yield'])} "
                f"| {_fmt(section['precision_voted']['precision'])} ({section['precision_voted']['n']}) "
                f"| {_fmt(section['precision_kept']['precision'])} ({section['precision_kept']['n']}) |"
            )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Precision per agreement bucket (bars, with counts), the kept range shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = report["buckets"]
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(buckets))
    heights = [100 * (b["precision"] or 0.0) for b in buckets]
    kept_range = [report["min_agreement"] <= b["lo"] and b["hi"] <= report["max_agreement"] + 1e-9 for b in buckets]
    ax.bar(xs, heights, color=["tab:green" if k else "tab:gray" for k in kept_range])
    for x, b, h in zip(xs, buckets, heights):
        note = f"{b['correct']}/{b['n']}" if b["n"] else ("no items" if not b["items"] else "no key")
        ax.text(x, h + 1, note, ha="center", fontsize=8)
    ax.set_xticks(list(xs), [b["bucket"] for b in buckets], rotation=20, fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_xlabel("agreement of the majority vote (green: inside the kept range)")
    ax.set_ylabel("precision vs knowledge-base key (%)")
    kept = report["precision_kept"]["precision"]
    ax.set_title(f"Pseudo-label precision; kept {_fmt(kept)}, yield {_fmt(report['yield'])}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_audit(report: dict, prefix: str | Path) -> dict[str, str]:
    """``PREFIX.json``, ``PREFIX.md`` and ``PREFIX.png``; returns their paths."""
    prefix = Path(prefix)
    paths = {"json": f"{prefix}.json", "markdown": f"{prefix}.md", "png": f"{prefix}.png"}
    write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    write_text(paths["markdown"], to_markdown(report))
    plot(report, Path(paths["png"]))
    return paths
