"""The evaluation report: JSON (everything), a Markdown table per model plus a side-by-side table with
deltas against the first model, and a PNG of accuracies with their 95% intervals."""

from __future__ import annotations

import json
import math
from pathlib import Path

from medssr.evaluation.calibration import calibration_markdown
from medssr.storage import write_text

AVERAGE = "average"


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def _acc(metric: dict) -> str:
    return f"{_pct(metric['mean'])} ± {_pct(metric['std'])}"


def _ci(metric: dict) -> str:
    low, high = metric["ci95"]
    return f"[{_pct(low)}, {_pct(high)}]"


def macro_average(scores: dict[str, dict]) -> dict:
    """Unweighted mean over benchmarks of each accuracy mean (the paper's 'average' column)."""
    names = [name for name, s in scores.items() if s["items"]]
    if not names:
        return {}
    out = {"benchmarks": len(names), "items": sum(scores[n]["items"] for n in names)}
    for metric in ("strict", "lenient", "with_recovery"):
        out[metric] = sum(scores[n][metric]["mean"] for n in names) / len(names)
    out["recovery_rate"] = sum(scores[n]["recovery_rate"] for n in names) / len(names)
    return out


def model_table(label: str, scores: dict[str, dict], rare: set[str]) -> str:
    lines = [
        f"### {label}",
        "",
        "| benchmark | items × n | strict acc % (mean ± std) | strict 95% CI | lenient acc % | lenient 95% CI "
        "| recovery rate % | recovered correct | acc. incl. forced recovery % (reference protocol) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in scores.items():
        mark = " (rare)" if name in rare else ""
        lines.append(
            f"| {name}{mark} | {s['items']} × {s['n']} | {_acc(s['strict'])} | {_ci(s['strict'])} | {_acc(s['lenient'])} "
            f"| {_ci(s['lenient'])} | {_pct(s['recovery_rate'])} | {s['recovered_correct']}/{s['recovered']} "
            f"| {_acc(s['with_recovery'])} |"
        )
    avg = macro_average(scores)
    if avg:
        lines.append(
            f"| **{AVERAGE}** ({avg['benchmarks']} benchmarks) | {avg['items']} | {_pct(avg['strict'])} | | "
            f"{_pct(avg['lenient'])} | | {_pct(avg['recovery_rate'])} | | {_pct(avg['with_recovery'])} |"
        )
    return "\n".join(lines) + "\n"


def comparison_table(summary: dict[str, dict[str, dict]], metric: str) -> str:
    """Benchmarks as rows, models as columns, each later model with its delta to the first."""
    labels = list(summary)
    benchmarks = [b for b in summary[labels[0]]]
    header = "| benchmark | " + " | ".join(labels) + " |"
    lines = [f"#### {metric} accuracy % (Δ vs {labels[0]})", "", header, "|---|" + "---:|" * len(labels)]
    rows = benchmarks + [AVERAGE]
    for name in rows:
        cells = []
        base = None
        for index, label in enumerate(labels):
            scores = summary[label]
            value = macro_average(scores).get(metric) if name == AVERAGE else scores.get(name, {}).get(metric, {}).get("mean")
            if value is None:
                cells.append("n/a")
                continue
            if index == 0:
                base = value
                cells.append(_pct(value))
            else:
                delta = "" if base is None else f" ({100 * (value - base):+.1f})"
                cells.append(f"{_pct(value)}{delta}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def headline_metrics(result: dict) -> dict[str, float]:
    """The numbers two pipeline runs are compared by, flat for MLflow: per model and benchmark each
    accuracy with its 95% interval (``eval.<model>.<benchmark>.<metric>[.ci_low|.ci_high]``), and the
    paired differences (``delta.<model>_vs_<first>.<benchmark>.<metric>[.ci_low|.ci_high|.mde]``)."""
    flat: dict[str, float] = {}
    for label, scores in result["summary"].items():
        for bench, s in scores.items():
            flat[f"eval.{bench}.questions"] = s["items"]
            for metric in ("strict", "lenient", "with_recovery"):
                key = f"eval.{label}.{bench}.{metric}"
                flat[key] = s[metric]["mean"]
                flat[f"{key}.ci_low"], flat[f"{key}.ci_high"] = s[metric]["ci95"]
            flat[f"eval.{label}.{bench}.recovery_rate"] = s["recovery_rate"]
    for label, benches in result.get("calibration", {}).items():
        for bench, cal in benches.items():
            flat[f"eval.{label}.{bench}.ece"] = cal["ece"]
    for comparison, benches in result.get("paired", {}).items():
        for bench, metrics in benches.items():
            for metric, d in metrics.items():
                key = f"delta.{comparison}.{bench}.{metric}"
                flat[key] = d["delta"]
                flat[f"{key}.ci_low"], flat[f"{key}.ci_high"] = d["ci"]
                flat[f"{key}.mde"] = d.get("mde")
    return {k: float(v) for k, v in flat.items() if v is not None and not math.isnan(float(v))}


def paired_table(paired: dict[str, dict[str, dict]]) -> str:
    """Each model minus the first, on the questions both answered: delta in points [paired 95% interval]."""
    lines = [
        "#### Paired differences (points, [paired-bootstrap 95% interval] over the questions both answered)",
        "",
        "| comparison | benchmark | n | strict | lenient | incl. forced recovery |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for comparison, benches in paired.items():
        for bench, metrics in benches.items():
            cells = []
            for metric in ("strict", "lenient", "with_recovery"):
                d = metrics.get(metric)
                cells.append("n/a" if d is None else f"{100 * d['delta']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]")
            n = next(iter(metrics.values()))["n"]
            lines.append(f"| {comparison.replace('_vs_', ' vs ')} | {bench} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(result: dict) -> str:
    settings = result["settings"]
    sampling = settings["sampling"]
    parts = [
        "# Evaluation",
        "",
        f"Sampling: temperature {sampling['temperature']}, top_p {sampling['top_p']}, top_k {sampling['top_k']}, "
        f"max_tokens {sampling['max_tokens']}, n = {settings['n']} samples per question; prompt style "
        f"{settings['prompt_style']}; limit {settings['limit']}.",
        "Strict = the final 'The answer is X' statement; lenient adds boxed/'Answer:'/bold/parenthesised letters and "
        "exact option text. Accuracy is mean ± std over the n samples; CIs resample questions (bootstrap). "
        "Samples strict extraction cannot read get a second pass constrained to the question's own letters: "
        "its share is the recovery rate, never part of the accuracy; the last column is the reference "
        "protocol's number, where forced guesses do count.",
        "",
    ]
    rare = set(settings.get("rare_benchmarks", []))
    for label, scores in result["summary"].items():
        parts.append(model_table(label, scores, rare))
    if len(result["summary"]) > 1:
        parts += [comparison_table(result["summary"], "strict"), comparison_table(result["summary"], "lenient")]
    if result.get("paired"):
        parts.append(paired_table(result["paired"]))
    if result.get("calibration"):
        parts.append(calibration_markdown(result["calibration"]))
    if result["skipped"]:
        parts.append("Skipped benchmarks:\n")
        parts += [f"- {name}: {reason}" for name, reason in result["skipped"].items()]
        parts.append("")
    return "\n".join(parts) + "\n"


def plot(result: dict, path: Path) -> None:
    """Grouped bars per benchmark (one bar per model), strict and lenient panels, 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary = result["summary"]
    labels = list(summary)
    benchmarks = list(next(iter(summary.values()))) if summary else []
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 1.1 * len(benchmarks) * max(1, len(labels)) + 2), 7), sharex=True)
    width = 0.8 / max(1, len(labels))
    xs = np.arange(len(benchmarks))
    for ax, metric in zip(axes, ("strict", "lenient")):
        for index, label in enumerate(labels):
            scores = [summary[label][b][metric] for b in benchmarks]
            means = np.array([100 * s["mean"] for s in scores])
            low = np.array([100 * s["ci95"][0] for s in scores])
            high = np.array([100 * s["ci95"][1] for s in scores])
            errors = np.vstack([np.clip(means - low, 0, None), np.clip(high - means, 0, None)])
            ax.bar(xs + index * width - 0.4 + width / 2, means, width, yerr=errors, capsize=2, label=label)
        ax.set_ylabel(f"{metric} accuracy %")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[-1].set_xticks(xs, benchmarks, rotation=30, ha="right")
    sampling = result["settings"]["sampling"]
    fig.suptitle(f"n={result['settings']['n']}, T={sampling['temperature']}, max_tokens={sampling['max_tokens']} (95% CI)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _finite(value):
    """JSON has no NaN: turn it into null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_report(result: dict, out_dir: str | Path) -> dict[str, str]:
    out = Path(out_dir)
    paths = {"json": str(out / "results.json"), "markdown": str(out / "results.md"), "png": str(out / "results.png")}
    write_text(paths["json"], json.dumps(_finite(result), indent=2, default=str) + "\n")
    write_text(paths["markdown"], to_markdown(result))
    if result["summary"] and any(result["summary"].values()):
        plot(result, Path(paths["png"]))
    else:
        paths.pop("png")
    return paths
