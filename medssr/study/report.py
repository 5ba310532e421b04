"""The study's report: accuracies, paired deltas (overall and by question type), pseudo-label quality,
training curves and wall times, as one Markdown file with PNG figures beside it.

Everything is computed from the step markers and per-question files of the study folder, so the
report of a finished study can be written again at any time and says exactly what the runs did.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medssr.evaluation.calibration import read_sample_records, sample_letter
from medssr.evaluation.per_question import METRICS, accuracy_by_question, paired_deltas, read_rows
from medssr.evaluation.scoring import bootstrap_ci, paired_bootstrap
from medssr.storage import write_text
from medssr.study.config import ARMS, PAIRED_COMPARISONS
from medssr.study.folder import Study, write_json
from medssr.study.run import TRAINING_RUNS
from medssr.study.steps import HELDOUT

METRIC_NAMES = {"strict": "strict", "lenient": "lenient", "with_recovery": "reference protocol"}
HEADLINE_METRIC = "with_recovery"
CORRECTNESS = "rewards/correctness_reward/mean"


def pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def interval(low: float, high: float) -> str:
    return f"[{pct(low)}, {pct(high)}]"


def signed(delta: dict) -> str:
    return f"{100 * delta['delta']:+.1f} [{100 * delta['ci'][0]:+.1f}, {100 * delta['ci'][1]:+.1f}]"


def excludes_zero(delta: dict) -> bool:
    return delta["ci"][0] > 0 or delta["ci"][1] < 0


class StudyReport:
    """The numbers of a finished study, read from its folder."""

    def __init__(self, study: Study):
        self.study = study
        self.config = study.config
        self.arms = {arm: study.finished(f"arm-{arm}") for arm in ARMS}
        missing = [arm for arm, done in self.arms.items() if done is None]
        if missing:
            raise ValueError(f"the report needs every arm; not finished: {', '.join(missing)}")
        self.rows = {arm: [row for path in done["per_question"] for row in read_rows(path)] for arm, done in self.arms.items()}
        self.prepared = study.finished("prepare")
        self.labels = study.finished("label")
        self.training = {run: study.finished(f"train-{run}") for run in TRAINING_RUNS}
        evaluation = self.config.settings["evaluation"]
        self.resamples, self.seed = evaluation["bootstrap_samples"], evaluation["seed"]
        self.paired = {(a, b): paired_deltas(self.rows[a], self.rows[b], self.resamples, self.seed) for a, b in PAIRED_COMPARISONS}
        self.benchmarks = list(self.arms["base"]["summary"])
        self.letters = {arm: self.letter_shares(arm) for arm in ARMS if arm != "prior"}
        self.types = sorted(set(self.prepared["heldout_question_types"].values()))

    def letter_shares(self, arm: str) -> dict[str, dict]:
        """Per benchmark: the share of an arm's samples answering each letter under the reference protocol
        ("none" where neither pass read one), and the gold letters' shares. A policy that learned a letter
        preference shows it here whatever its accuracy."""
        by_benchmark: dict[str, list] = {}
        for record in read_sample_records(self.study.root / f"arm-{arm}" / "eval"):
            by_benchmark.setdefault(record.benchmark, []).append(record)
        return {
            bench: {"samples": len(records),
                    "answered": _shares([sample_letter(record, HEADLINE_METRIC) or "none" for record in records]),
                    "gold": _shares([record.answer or "none" for record in records])}
            for bench, records in by_benchmark.items()
        }

    def type_rows(self, arm: str, kind: str) -> list[dict]:
        types = self.prepared["heldout_question_types"]
        return [row for row in self.rows[arm] if row["benchmark"] == HELDOUT and types.get(str(row["item_id"])) == kind]

    def by_type(self) -> dict[str, dict]:
        """Per question type on raredis_heldout: questions, each arm's reference-protocol accuracy (95% interval)
        and the paired deltas."""
        resamples, seed = self.resamples, self.seed
        out = {}
        for kind in self.types:
            accuracy = {}
            for arm in ARMS:
                per_item = accuracy_by_question(self.type_rows(arm, kind), HEADLINE_METRIC).get(HELDOUT, {})
                values = np.array(list(per_item.values()), dtype=float).reshape(-1, 1)
                accuracy[arm] = (float(values.mean()) if values.size else float("nan"), *bootstrap_ci(values, resamples, seed))
            deltas = {}
            for a, b in PAIRED_COMPARISONS:
                mine = accuracy_by_question(self.type_rows(a, kind), HEADLINE_METRIC).get(HELDOUT, {})
                theirs = accuracy_by_question(self.type_rows(b, kind), HEADLINE_METRIC).get(HELDOUT, {})
                shared = sorted(set(mine) & set(theirs))
                delta, low, high = paired_bootstrap(np.array([mine[q] for q in shared]), np.array([theirs[q] for q in shared]), resamples, seed)
                deltas[(a, b)] = {"n": len(shared), "delta": delta, "ci": [low, high]}
            out[kind] = {"questions": len(accuracy_by_question(self.type_rows("base", kind), HEADLINE_METRIC).get(HELDOUT, {})),
                         "accuracy": accuracy, "paired": deltas}
        return out

    def headline_numbers(self) -> dict[str, float]:
        """Flat paired deltas for MLflow: ``<a>_vs_<b>.<benchmark>.<metric>.{delta,ci_low,ci_high}``."""
        flat = {}
        for (a, b), benches in self.paired.items():
            for bench, metrics in benches.items():
                for metric, d in metrics.items():
                    key = f"{a}_vs_{b}.{bench}.{metric}"
                    flat.update({f"{key}.delta": d["delta"], f"{key}.ci_low": d["ci"][0], f"{key}.ci_high": d["ci"][1]})
        return flat


def _shares(values: list[str]) -> dict[str, float]:
    return {value: values.count(value) / len(values) for value in sorted(set(values))}


def history(done: dict) -> list[dict]:
    return [json.loads(line) for line in Path(done["history"]).read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_figures(report: StudyReport, by_type: dict, folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}

    fig, axes = plt.subplots(1, len(report.benchmarks), figsize=(5 * len(report.benchmarks), 4), squeeze=False)
    for ax, bench in zip(axes[0], report.benchmarks):
        for offset, metric in enumerate(METRICS):
            means = [report.arms[arm]["summary"][bench][metric]["mean"] for arm in ARMS]
            cis = [report.arms[arm]["summary"][bench][metric]["ci95"] for arm in ARMS]
            xs = np.arange(len(ARMS)) + (offset - 1) * 0.27
            errors = np.array([[m - c[0], c[1] - m] for m, c in zip(means, cis)]).T * 100
            ax.bar(xs, np.array(means) * 100, 0.27, yerr=errors, capsize=2, label=METRIC_NAMES[metric])
        ax.set_xticks(range(len(ARMS)), ARMS, rotation=20)
        ax.set_title(bench)
        ax.set_ylabel("accuracy (%), 95% interval")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths["accuracy"] = str(folder / "accuracy.png")
    fig.savefig(paths["accuracy"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(report.benchmarks), figsize=(5 * len(report.benchmarks), 3.5), squeeze=False)
    for ax, bench in zip(axes[0], report.benchmarks):
        labels = [f"{a} vs {b}" for a, b in PAIRED_COMPARISONS]
        for offset, metric in enumerate(METRICS):
            ds = [report.paired[pair][bench][metric] for pair in PAIRED_COMPARISONS]
            ys = np.arange(len(ds)) + (offset - 1) * 0.25
            ax.errorbar([100 * d["delta"] for d in ds], ys, xerr=np.array([[d["delta"] - d["ci"][0], d["ci"][1] - d["delta"]] for d in ds]).T * 100,
                        fmt="o", capsize=2, label=METRIC_NAMES[metric])
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_title(f"{bench}: paired delta, points")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths["paired"] = str(folder / "paired.png")
    fig.savefig(paths["paired"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for offset, pair in enumerate(PAIRED_COMPARISONS):
        ds = [by_type[kind]["paired"][pair] for kind in report.types]
        xs = np.arange(len(report.types)) + (offset - len(PAIRED_COMPARISONS) / 2) * 0.15
        ax.errorbar(xs, [100 * d["delta"] for d in ds], yerr=np.array([[d["delta"] - d["ci"][0], d["ci"][1] - d["delta"]] for d in ds]).T * 100,
                    fmt="o", capsize=2, label=f"{pair[0]} vs {pair[1]}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(report.types)), report.types, rotation=15)
    ax.set_ylabel("paired delta, reference protocol (points)")
    ax.set_title(f"{HELDOUT} by question type")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["by_type"] = str(folder / "by_type.png")
    fig.savefig(paths["by_type"], dpi=110)
    plt.close(fig)

    buckets = report.labels["audit"]["buckets"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    xs = np.arange(len(buckets))
    ax.bar(xs - 0.2, [100 * (b["precision"] or 0.0) for b in buckets], 0.4, label="precision vs knowledge-base key")
    total = max(report.labels["audit"]["items"], 1)
    ax.bar(xs + 0.2, [100 * b["kept"] / total for b in buckets], 0.4, label="kept (share of all questions)")
    ax.set_xticks(xs, [b["bucket"] for b in buckets], rotation=15, fontsize=8)
    ax.set_ylabel("%")
    ax.set_title("Pseudo-labels per agreement bucket")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["labels"] = str(folder / "labels.png")
    fig.savefig(paths["labels"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for run, done in report.training.items():
        entries = [e for e in history(done) if "reward" in e]
        steps = [e["step"] for e in entries]
        axes[0].plot(steps, [e["reward"] for e in entries], marker=".", label=run)
        axes[1].plot(steps, [e.get(CORRECTNESS, float("nan")) for e in entries], marker=".", label=run)
    axes[0].set_title("reward (correctness + weighted format)")
    axes[1].set_title("training accuracy (correctness reward)")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths["training"] = str(folder / "training.png")
    fig.savefig(paths["training"], dpi=110)
    plt.close(fig)
    return paths


def changed_settings(config) -> dict:
    """The study's identity less the stage settings left at their config's default."""
    from medssr.stages import STAGES
    from medssr.study.config import STUDY_STAGES, flat_settings

    defaults = flat_settings({stage: STAGES[stage].defaults() for stage in STUDY_STAGES})
    return {key: value for key, value in config.identity().items() if key not in defaults or defaults[key] != value}


def markdown(report: StudyReport, by_type: dict, figures: dict[str, str], report_path: Path) -> str:
    config, study = report.config, report.study
    settings = config.settings
    split, labeling, evaluation = settings["split"], settings["labeling"], settings["evaluation"]
    stage1, stage2 = settings["train_self"], settings["train_supervised"]
    counts = report.prepared["counts"]
    evaluated = {name: counts.get(f"eval_questions.{name}", "all") for name in evaluation["benchmarks"]}
    rel = {name: Path(path).relative_to(report_path.parent).as_posix() for name, path in figures.items()}
    main = report.paired[("medssr", "rl-real")][HELDOUT][HEADLINE_METRIC]
    over_prior = report.paired[("medssr", "prior")][HELDOUT][HEADLINE_METRIC]
    goal_met = main["delta"] > 0 and main["ci"][0] > 0 and over_prior["ci"][0] > 0
    lines = [
        f"# MedSSR study: {settings['base_model']}",
        "",
        "Generated by `medssr study` from the study folder's results; every number below comes from its per-question files.",
        "",
        "## Headline",
        "",
        f"On `{HELDOUT}` under the reference protocol, medssr minus rl-real is {signed(main)} points (paired, {main['n']} questions), "
        f"and medssr minus prior is {signed(over_prior)}. "
        + ("Both intervals exclude 0 and lie above it: the goal is met." if goal_met else
           "The goal (both intervals above 0) is not met by this run."),
        "",
        "## Settings",
        "",
        *(f"- part {i}: `{part['command'] or '(run_study from Python)'}` ({part['started_at']})" for i, part in enumerate(study.parts(), start=1)),
        f"- study id `{study.study_id}`, config sha256 `{config.identity_hash()}`",
        f"- base model `{report.prepared['base_model']}`; stage 2: {split['train_size']} `{split['split_benchmark']}` questions; "
        "evaluation: " + ", ".join(f"`{name}` ({count})" for name, count in evaluated.items())
        + (f"; {', '.join(config.extra_benchmarks)} at {config.extra_limit}" if config.extra_benchmarks else ""),
        f"- synthesis {settings['synthesis']['n']} questions (rare ratio {settings['synthesis']['rare_ratio']}), "
        f"{labeling['n_samples']} votes each, kept {report.labels['kept']} with {labeling['min_agreement']} <= agreement <= {labeling['max_agreement']}",
        f"- GRPO: stage 1 {stage1['max_steps']} steps, stage 2 {stage2['max_steps']} steps, {stage2['num_generations']} completions per prompt, "
        f"{stage2['per_device_train_batch_size']} per step, lr {stage2['learning_rate']}, up to {stage2['max_completion_length']} tokens",
        f"- evaluation: n={evaluation['n']}, T {evaluation['temperature']}, top-p {evaluation['top_p']}, top-k {evaluation['top_k']}, "
        f"{evaluation['max_tokens']} tokens; {evaluation['bootstrap_samples']} bootstrap resamples",
        "",
        "Settings that differ from their stage config's default (the config sha256 covers every setting; `study.json` in the "
        "study folder lists them all):",
        "",
        "```json",
        json.dumps(changed_settings(config), indent=1),
        "```",
        "",
        "## Accuracy",
        "",
        "Mean over the samples, 95% bootstrap interval over questions (points). Reference protocol: strict extraction, and the "
        "letter-constrained second pass where strict extraction read nothing.",
        "",
        f"![accuracy]({rel['accuracy']})",
        "",
        "| arm | benchmark | questions | strict | lenient | reference protocol | second pass share |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for arm in ARMS:
        for bench in report.benchmarks:
            s = report.arms[arm]["summary"][bench]
            cells = [f"{pct(s[m]['mean'])} {interval(*s[m]['ci95'])}" for m in METRICS]
            lines.append(f"| {arm} | {bench} | {s['items']} | " + " | ".join(cells) + f" | {pct(s['recovery_rate'])} |")
    lines += ["", "## Paired deltas", "",
              "Candidate minus reference on the same questions, paired bootstrap 95% interval (points); * = the interval excludes 0.", "",
              f"![paired]({rel['paired']})", "",
              "| comparison | benchmark | questions | strict | lenient | reference protocol |", "|---|---|---:|---|---|---|"]
    for (a, b), benches in report.paired.items():
        for bench in report.benchmarks:
            ds = benches[bench]
            cells = [signed(ds[m]) + (" *" if excludes_zero(ds[m]) else "") for m in METRICS]
            lines.append(f"| {a} vs {b} | {bench} | {ds['strict']['n']} | " + " | ".join(cells) + " |")
    lines += ["", f"## `{HELDOUT}` by question type", "", "Reference-protocol accuracy per arm (95% interval) and paired deltas (points).", "",
              f"![by type]({rel['by_type']})", "",
              "| type | questions | " + " | ".join(ARMS) + " |", "|---|---:|" + "---|" * len(ARMS)]
    for kind, section in by_type.items():
        lines.append(f"| {kind} | {section['questions']} | " + " | ".join(
            f"{pct(m)} {interval(lo, hi)}" for m, lo, hi in (section["accuracy"][arm] for arm in ARMS)) + " |")
    lines += ["", "| type | " + " | ".join(f"{a} vs {b}" for a, b in PAIRED_COMPARISONS) + " |", "|---|" + "---|" * len(PAIRED_COMPARISONS)]
    for kind, section in by_type.items():
        lines.append(f"| {kind} | " + " | ".join(signed(section["paired"][pair]) + (" *" if excludes_zero(section["paired"][pair]) else "")
                                             for pair in PAIRED_COMPARISONS) + " |")
    audit = report.labels["audit"]
    lines += ["", "## Pseudo-labels", "",
              f"{audit['items']} synthesised questions, {audit['voted']} with a single winning letter, {audit['kept']} kept "
              f"(yield {pct(audit['yield'])}%); precision of the kept labels against the knowledge-base key "
              f"{pct(audit['precision_kept']['precision'])}% ({audit['precision_kept']['n']} keyed). The oracle arm trains stage 1 on "
              f"the same {report.labels['kb_labelled']} kept questions, rewarded by that key.", "",
              f"![labels]({rel['labels']})", "",
              "| agreement | questions | share of all | kept | keyed | correct | precision |", "|---|---:|---:|---:|---:|---:|---:|"]
    for b in audit["buckets"]:
        share = pct(b["items"] / max(audit["items"], 1))
        lines.append(f"| {b['bucket']} | {b['items']} | {share}% | {b['kept']} | {b['n']} | {b['correct']} | {pct(b['precision'])} |")
    lines += ["", "## Training runs", "", f"![training]({rel['training']})", "",
              "| run | stage | starts from | steps | reward first / last | training accuracy first / last | wall (s) |", "|---|---|---|---:|---|---|---:|"]
    for run, done in report.training.items():
        entries = [e for e in history(done) if "reward" in e]
        first, last = (entries[0], entries[-1]) if entries else ({}, {})
        lines.append(
            f"| {run} | {done['stage']} | {TRAINING_RUNS[run][1]} | {done['metrics'].get('global_step')} | "
            f"{first.get('reward', float('nan')):.3f} / {last.get('reward', float('nan')):.3f} | "
            f"{first.get(CORRECTNESS, float('nan')):.3f} / {last.get(CORRECTNESS, float('nan')):.3f} | {done['wall_seconds']:.0f} |"
        )
    lines += ["", "## Answer prior", "", "Letter counts of the reward targets per question type (the prior arm answers the most common one).", "",
              "| type | letters |", "|---|---|"]
    for kind, counts in report.arms["prior"]["letters"].items():
        lines.append(f"| {kind} | " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " |")
    lines += ["", "## Answer letters", "",
              "Share of each model arm's samples answering each letter under the reference protocol (none: neither pass read one), "
              "beside the gold letters' shares (%). Accuracy near the prior's with one letter far above its gold share is a "
              "letter preference, not knowledge.", ""]
    for bench in report.benchmarks:
        columns = sorted({letter for shares in report.letters.values() if bench in shares
                          for letter in (*shares[bench]["answered"], *shares[bench]["gold"])}, key=lambda c: (c == "none", c))
        lines += [f"`{bench}`", "", "| arm | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
        gold = next((shares[bench]["gold"] for shares in report.letters.values() if bench in shares), {})
        lines.append("| gold | " + " | ".join(pct(gold.get(c, 0.0)) for c in columns) + " |")
        for arm, shares in report.letters.items():
            if bench in shares:
                lines.append(f"| {arm} | " + " | ".join(pct(shares[bench]["answered"].get(c, 0.0)) for c in columns) + " |")
        lines.append("")
    lines += ["## Wall time per step", "", "| step | wall (s) | finished |", "|---|---:|---|"]
    total = 0.0
    for marker in sorted(study.root.glob("*/done.json"), key=lambda p: study.read_marker(p)["finished_at"]):
        done = study.read_marker(marker)
        total += done["wall_seconds"]
        lines.append(f"| {marker.parent.name} | {done['wall_seconds']:.0f} | {done['finished_at']} |")
    lines.append(f"| total | {total:.0f} | |")
    return "\n".join(lines) + "\n"


def write_study_report(study: Study) -> Path:
    """Write the report (and ``report/paired.json`` in the study folder, the headline numbers MLflow gets)."""
    report = StudyReport(study)
    by_type = report.by_type()
    report_path = Path(study.config.report).resolve()
    figures = plot_figures(report, by_type, report_path.with_suffix(""))
    write_text(report_path, markdown(report, by_type, figures, report_path))
    write_json(study.root / "report" / "paired.json", report.headline_numbers())
    return report_path
