"""The study's report: accuracies, paired deltas with their minimal detectable effects (overall and by
question type), the positive control, gain as a function of label precision, pseudo-label quality,
each training run's learning signal and curves, wall times, as one Markdown file with PNG figures beside it.

Everything is computed from the step markers and per-question files of the study folder, so the
report of a finished study can be written again at any time and says exactly what the runs did. An arm
whose model comes from a training run that learned nothing (no step with reward variance, or weights
unchanged) is flagged and shown as no result; so is every comparison with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medssr.evaluation.calibration import read_sample_records, sample_letter
from medssr.evaluation.per_question import METRICS, accuracy_by_question, paired_deltas, paired_difference, read_rows
from medssr.evaluation.scoring import POWER, bootstrap_ci
from medssr.storage import write_text
from medssr.study.plan import CHANCE, oracle_steps_name, planted_name
from medssr.study.folder import Study, write_json
from medssr.study.steps import HELDOUT, IN_DISTRIBUTION
from medssr.training.signal import LearningSignal

METRIC_NAMES = {"strict": "strict", "lenient": "lenient", "with_recovery": "reference protocol"}
HEADLINE_METRIC = "with_recovery"
CORRECTNESS = "rewards/correctness_reward/mean"
POSITIVE_CONTROL = ("oracle", "base")
"""Stage 1 on perfect labels against the base model: if it shows nothing, the study cannot detect an effect."""


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
        self.plan = self.config.plan
        self.arms = {arm: study.finished(f"arm-{arm}") for arm in self.plan.arms}
        missing = [arm for arm, done in self.arms.items() if done is None]
        if missing:
            raise ValueError(f"the report needs every arm; not finished: {', '.join(missing)}")
        self.rows = {arm: [row for path in done["per_question"] for row in read_rows(path)] for arm, done in self.arms.items()}
        self.prepared = study.finished("prepare")
        self.labels = study.finished("label")
        self.training = {run: study.finished(f"train-{run}") for run in self.plan.runs}
        self.planted = {precision: study.finished(f"plant-{precision}") for precision in self.plan.planted}
        evaluation = self.config.settings["evaluation"]
        self.resamples, self.seed = evaluation["bootstrap_samples"], evaluation["seed"]
        self.paired = {(a, b): paired_deltas(self.rows[a], self.rows[b], self.resamples, self.seed) for a, b in self.plan.comparisons}
        self.benchmarks = list(self.arms["base"]["summary"])
        self.types = sorted(set(self.prepared["heldout_question_types"].values()))
        self.control_benchmark = IN_DISTRIBUTION if IN_DISTRIBUTION in self.benchmarks else HELDOUT
        """Where the positive control and the label-precision curve are read: the in-distribution set when the study
        has one (training can show there), else raredis_heldout."""
        self.signals = {run: signal_of(done) for run, done in self.training.items()}
        self.seen = study.finished("seen")
        probe = study.root / "probe" / "probe.md"
        self.probe = probe.read_text(encoding="utf-8") if probe.is_file() else ""
        """The premise probe's table when it was run into the study folder (``medssr probe --out-dir STUDY/probe``)."""
        self.flags = {arm: self.flag(arm) for arm in self.plan.arms}
        self.letters = {arm: self.letter_shares(arm) for arm, spec in self.plan.arms.items() if spec.model is not None and not self.flags[arm]}

    def flag(self, arm: str) -> str:
        """Why an arm is no result (a training run behind its model learned nothing), or ""."""
        bad = [f"train-{run} {signal.reason()}" for run in self.plan.chain(arm) if (signal := self.signals[run]) is not None and not signal.learned]
        return "; ".join(bad)

    def comparison_flag(self, pair: tuple[str, str]) -> str:
        return "; ".join(dict.fromkeys(flag for arm in pair if (flag := self.flags[arm])))

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
        out = {}
        for kind in self.types:
            per_arm = {arm: accuracy_by_question(self.type_rows(arm, kind), HEADLINE_METRIC).get(HELDOUT, {}) for arm in self.plan.arms}
            accuracy = {}
            for arm, per_item in per_arm.items():
                values = np.array(list(per_item.values()), dtype=float).reshape(-1, 1)
                accuracy[arm] = (float(values.mean()) if values.size else float("nan"), *bootstrap_ci(values, self.resamples, self.seed))
            deltas = {(a, b): paired_difference(per_arm[a], per_arm[b], self.resamples, self.seed) for a, b in self.plan.comparisons}
            out[kind] = {"questions": len(per_arm["base"]), "accuracy": accuracy, "paired": deltas}
        return out

    def precision_curve(self) -> list[dict]:
        """Stage-1 label precision against each arm's gain over rl-real on the control benchmark (reference protocol):
        the planted arms at their planted precision, the oracle at 1, medssr at its pseudo-labels' measured one."""
        found = []
        for precision, done in self.planted.items():
            found.append({"arm": planted_name(precision), "precision": done["precision"], "kind": "planted"})
        found.append({"arm": "oracle", "precision": 1.0, "kind": "planted"})
        found.append({"arm": "medssr", "precision": self.labels["audit"]["precision_kept"]["precision"], "kind": "pseudo-labels"})
        for point in found:
            point["delta"] = self.paired_with(point["arm"], "rl-real")[self.control_benchmark][HEADLINE_METRIC]
            point["flag"] = self.comparison_flag((point["arm"], "rl-real"))
        return sorted(found, key=lambda p: (p["precision"] is None, p["precision"] or 0.0))

    def paired_with(self, candidate: str, reference: str) -> dict:
        pair = (candidate, reference)
        return self.paired[pair] if pair in self.paired else paired_deltas(self.rows[candidate], self.rows[reference], self.resamples, self.seed)

    def positive_controls(self) -> list[tuple[str, int, dict]]:
        """(arm, its GRPO steps on the key, its paired deltas over base) for the oracle and every oracle-Nsteps arm."""
        arms = ["oracle", *(oracle_steps_name(n) for n in self.plan.oracle_steps)]
        steps = {arm: sum(self.training[run]["metrics"].get("global_step") or 0 for run in self.plan.chain(arm)
                          if self.plan.runs[run].data == "kb_labels") for arm in arms}
        return [(arm, steps[arm], self.paired_with(arm, "base")) for arm in arms]

    def headline_numbers(self) -> dict[str, float]:
        """Flat paired deltas for MLflow: ``<a>_vs_<b>.<benchmark>.<metric>.{delta,ci_low,ci_high,mde}``."""
        flat = {}
        for (a, b), benches in self.paired.items():
            for bench, metrics in benches.items():
                for metric, d in metrics.items():
                    key = f"{a}_vs_{b}.{bench}.{metric}"
                    flat.update({f"{key}.delta": d["delta"], f"{key}.ci_low": d["ci"][0], f"{key}.ci_high": d["ci"][1], f"{key}.mde": d["mde"]})
        return flat


def signal_of(done: dict) -> LearningSignal | None:
    """A training run's learning signal from its marker (None for runs from before it was recorded)."""
    recorded = done["metrics"].get("learning_signal")
    return LearningSignal.from_dict(recorded) if recorded else None


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
    arms = [arm for arm in report.plan.arms if not report.flags[arm]]  # a flagged arm is no result
    comparisons = [pair for pair in report.plan.comparisons if not report.comparison_flag(pair)]

    fig, axes = plt.subplots(1, len(report.benchmarks), figsize=(max(5, 0.9 * len(arms)) * len(report.benchmarks), 4), squeeze=False)
    for ax, bench in zip(axes[0], report.benchmarks):
        for offset, metric in enumerate(METRICS):
            means = [report.arms[arm]["summary"][bench][metric]["mean"] for arm in arms]
            cis = [report.arms[arm]["summary"][bench][metric]["ci95"] for arm in arms]
            xs = np.arange(len(arms)) + (offset - 1) * 0.27
            errors = np.array([[m - c[0], c[1] - m] for m, c in zip(means, cis)]).T * 100
            ax.bar(xs, np.array(means) * 100, 0.27, yerr=errors, capsize=2, label=METRIC_NAMES[metric])
        ax.set_xticks(range(len(arms)), arms, rotation=30, fontsize=8)
        ax.set_title(bench)
        ax.set_ylabel("accuracy (%), 95% interval")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths["accuracy"] = str(folder / "accuracy.png")
    fig.savefig(paths["accuracy"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(report.benchmarks), figsize=(5.5 * len(report.benchmarks), 0.5 * len(comparisons) + 2), squeeze=False)
    for ax, bench in zip(axes[0], report.benchmarks):
        for offset, metric in enumerate(METRICS):
            ds = [report.paired[pair][bench][metric] for pair in comparisons]
            ys = np.arange(len(ds)) + (offset - 1) * 0.25
            ax.errorbar([100 * d["delta"] for d in ds], ys, xerr=np.array([[d["delta"] - d["ci"][0], d["ci"][1] - d["delta"]] for d in ds]).T * 100,
                        fmt="o", capsize=2, label=METRIC_NAMES[metric])
        ax.axvline(0, color="gray", lw=0.8)
        ax.set_yticks(range(len(comparisons)), [f"{a} vs {b}" for a, b in comparisons], fontsize=8)
        ax.set_title(f"{bench}: paired delta, points")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths["paired"] = str(folder / "paired.png")
    fig.savefig(paths["paired"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for offset, pair in enumerate(comparisons):
        kinds = [i for i, kind in enumerate(report.types) if by_type[kind]["paired"][pair] is not None]
        ds = [by_type[report.types[i]]["paired"][pair] for i in kinds]
        xs = np.array(kinds) + (offset - len(comparisons) / 2) * 0.08
        ax.errorbar(xs, [100 * d["delta"] for d in ds], yerr=np.array([[d["delta"] - d["ci"][0], d["ci"][1] - d["delta"]] for d in ds]).T * 100,
                    fmt="o", capsize=2, label=f"{pair[0]} vs {pair[1]}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xticks(range(len(report.types)), report.types, rotation=15)
    ax.set_ylabel("paired delta, reference protocol (points)")
    ax.set_title(f"{HELDOUT} by question type")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    paths["by_type"] = str(folder / "by_type.png")
    fig.savefig(paths["by_type"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for point in (p for p in report.precision_curve() if p["precision"] is not None):
        d = point["delta"]
        style = {"planted": ("o", "tab:blue"), "pseudo-labels": ("s", "tab:red")}[point["kind"]]
        ax.errorbar([100 * point["precision"]], [100 * d["delta"]], yerr=[[100 * (d["delta"] - d["ci"][0])], [100 * (d["ci"][1] - d["delta"])]],
                    fmt=style[0], color=style[1] if not point["flag"] else "lightgray", capsize=3)
        ax.annotate(point["arm"] + (" (no result)" if point["flag"] else ""), (100 * point["precision"], 100 * d["delta"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("stage-1 label precision vs the knowledge-base key (%)")
    ax.set_ylabel(f"minus rl-real on {report.control_benchmark}, points")
    ax.set_title("Gain as a function of label precision (reference protocol)")
    fig.tight_layout()
    paths["precision"] = str(folder / "precision.png")
    fig.savefig(paths["precision"], dpi=110)
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
        ax.legend(fontsize=6)
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


def delta_cell(report: StudyReport, pair: tuple[str, str], delta: dict | None) -> str:
    if report.comparison_flag(pair):
        return "no result"
    if delta is None:
        return "n/a"
    return signed(delta) + (" *" if excludes_zero(delta) else "")


def headline(report: StudyReport) -> list[str]:
    """The headline comparison, the positive control's verdict and the chance comparison, in words."""
    main_pair, chance_pair = ("medssr", "rl-real"), ("medssr", CHANCE)
    main = report.paired[main_pair][HELDOUT][HEADLINE_METRIC]
    over_chance = report.paired[chance_pair][HELDOUT][HEADLINE_METRIC]
    control_bench = report.control_benchmark
    control = report.paired[POSITIVE_CONTROL][control_bench][HEADLINE_METRIC]
    if flag := report.comparison_flag(main_pair):
        return [f"The headline comparison (medssr minus rl-real on `{HELDOUT}`) is no result: {flag}."]
    text = (f"On `{HELDOUT}` under the reference protocol, medssr minus rl-real is {signed(main)} points (paired, {main['n']} "
            f"questions; minimal detectable effect {pct(main['mde'])} points at {100 * POWER:.0f}% power), and medssr minus "
            f"chance is {signed(over_chance)}. ")
    if report.comparison_flag(POSITIVE_CONTROL) or control["ci"][0] <= 0:
        why = report.comparison_flag(POSITIVE_CONTROL) or f"oracle minus base on `{control_bench}` is {signed(control)}, its interval not above 0"
        text += (f"The positive control shows no effect ({why}): with perfect labels stage 1 gains nothing measurable here, so "
                 "this study **cannot detect** what pseudo-labels do; its comparisons are not nulls.")
    else:
        goal = main["ci"][0] > 0 and over_chance["ci"][0] > 0
        text += (f"The positive control holds (oracle minus base on `{control_bench}` {signed(control)}). "
                 + ("Both intervals exclude 0 and lie above it: the goal is met." if goal else "The goal (both intervals above 0) is not met by this run."))
    return [text]


def markdown(report: StudyReport, by_type: dict, figures: dict[str, str], report_path: Path) -> str:
    config, study, plan = report.config, report.study, report.plan
    settings = config.settings
    split, labeling, evaluation = settings["split"], settings["labeling"], settings["evaluation"]
    stage1, stage2 = settings["train_self"], settings["train_supervised"]
    counts = report.prepared["counts"]
    evaluated = {name: counts.get(f"eval_questions.{name}", "all") for name in evaluation["benchmarks"]}
    rel = {name: Path(path).relative_to(report_path.parent).as_posix() for name, path in figures.items()}
    arms = list(plan.arms)
    lines = [
        f"# MedSSR study: {settings['base_model']}",
        "",
        "Generated by `medssr study` from the study folder's results; every number below comes from its per-question files, "
        f"published beside this report in [`{report_path.stem}/raw/`]({report_path.stem}/raw/) (`scripts/recompute_study.py` "
        "recomputes the paired deltas from them).",
        "",
        "## Headline",
        "",
        *headline(report),
        "",
    ]
    flagged = {arm: flag for arm, flag in report.flags.items() if flag}
    if flagged:
        lines += ["**Arms that are no result** (a training run behind their model learned nothing; they are left out of every table "
                  "and figure below):", "", *(f"- `{arm}`: {flag}" for arm, flag in flagged.items()), ""]
    lines += [
        "## Settings",
        "",
        *(f"- part {i}: `{part['command'] or '(run_study from Python)'}` ({part['started_at']})" for i, part in enumerate(study.parts(), start=1)),
        f"- study id `{study.study_id}`, config sha256 `{config.identity_hash()}`",
        f"- base model `{report.prepared['base_model']}`; stage 2: {split['train_size']} `{split['split_benchmark']}` questions; "
        "evaluation: " + ", ".join(f"`{name}` ({count})" for name, count in evaluated.items())
        + (f"; {', '.join(config.extra_benchmarks)} at {config.extra_limit}" if config.extra_benchmarks else ""),
        f"- synthesis {settings['synthesis']['n']} questions (rare ratio {settings['synthesis']['rare_ratio']}), "
        f"{labeling['n_samples']} votes each, kept {report.labels['kept']} with {labeling['min_agreement']} <= agreement <= {labeling['max_agreement']}",
        f"- GRPO: stage 1 {stage1['max_steps']} steps, stage 2 {stage2['max_steps']} steps (rl-real "
        f"{report.training['rl-real']['metrics'].get('global_step')}), {stage2['num_generations']} completions per prompt, "
        f"{stage2['per_device_train_batch_size']} per step, lr {stage2['learning_rate']}, up to {stage2['max_completion_length']} tokens",
        f"- evaluation: n={evaluation['n']}, T {evaluation['temperature']}, top-p {evaluation['top_p']}, top-k {evaluation['top_k']}, "
        f"{evaluation['max_tokens']} tokens; {evaluation['bootstrap_samples']} bootstrap resamples",
        *([f"- precision where unset (dtype auto, bf16 unset): {'bf16, the preparing machine computes it natively' if native else 'float32'}"]
          if (native := report.prepared.get("cpu_native_bf16")) is not None else []),
        "- arms: " + "; ".join(f"`{arm.name}` {arm.description}" for arm in plan.arms.values()),
        "",
        "Settings that differ from their stage config's default (the config sha256 covers every setting; `study.json` in the "
        "study folder, published in `raw/`, lists them all):",
        "",
        "```json",
        json.dumps(changed_settings(config), indent=1),
        "```",
        "",
        "## Accuracy",
        "",
        "Mean over the samples, 95% bootstrap interval over questions (points). Reference protocol: strict extraction, and the "
        "letter-constrained second pass where strict extraction read nothing. The chance arm scores 1/k per question.",
        "",
        f"![accuracy]({rel['accuracy']})",
        "",
        "| arm | benchmark | questions | strict | lenient | reference protocol | second pass share |",
        "|---|---|---:|---|---|---|---:|",
    ]
    for arm in arms:
        for bench in report.benchmarks:
            s = report.arms[arm]["summary"][bench]
            if report.flags[arm]:
                lines.append(f"| {arm} | {bench} | {s['items']} | no result | no result | no result | |")
                continue
            cells = [f"{pct(s[m]['mean'])} {interval(*s[m]['ci95'])}" for m in METRICS]
            lines.append(f"| {arm} | {bench} | {s['items']} | " + " | ".join(cells) + f" | {pct(s['recovery_rate'])} |")
    lines += ["", "## Paired deltas", "",
              "Candidate minus reference on the same questions, paired bootstrap 95% interval (points); * = the interval excludes 0. "
              f"MDE: the minimal detectable effect of the reference-protocol comparison, the true difference its interval excludes 0 "
              f"for with {100 * POWER:.0f}% probability (points).", "",
              f"![paired]({rel['paired']})", "",
              "| comparison | benchmark | questions | strict | lenient | reference protocol | MDE |", "|---|---|---:|---|---|---|---:|"]
    for pair, benches in report.paired.items():
        for bench in report.benchmarks:
            ds = benches[bench]
            cells = [delta_cell(report, pair, ds[m]) for m in METRICS]
            mde = "" if report.comparison_flag(pair) else pct(ds[HEADLINE_METRIC]["mde"])
            lines.append(f"| {pair[0]} vs {pair[1]} | {bench} | {ds['strict']['n']} | " + " | ".join(cells) + f" | {mde} |")
    lines += ["", "## Positive control", "",
              f"Stage 1 rewarded by the knowledge-base key (perfect labels) minus base, reference protocol (points). While its interval "
              f"on `{report.control_benchmark}` is not above 0, the study cannot detect what labels of any precision do. "
              + (f"`{IN_DISTRIBUTION}`: {report.seen['items']} new questions about the conditions of stage 1's knowledge-base questions "
                 f"({report.seen['not_built']} wanted ones could not be built)." if report.seen else ""), "",
              "| arm | steps on the key | benchmark | minus base | MDE |", "|---|---:|---|---|---:|"]
    for arm, steps, deltas in report.positive_controls():
        for bench in report.benchmarks:
            lines.append(f"| {arm} | {steps} | {bench} | {delta_cell(report, (arm, 'base'), deltas[bench][HEADLINE_METRIC])} | "
                         f"{'' if report.comparison_flag((arm, 'base')) else pct(deltas[bench][HEADLINE_METRIC]['mde'])} |")
    if report.probe:
        lines += ["", "## Premise probe", "", *report.probe.split("\n", 2)[2].rstrip().splitlines()]
    curve = report.precision_curve()
    lines += ["", "## Gain by label precision", "",
              f"Each arm with stage 1 on the oracle's {report.labels['kb_labelled']} questions, its labels of the stated precision against the "
              "knowledge-base key (planted: the key corrupted on a seeded share of the questions; medssr: its pseudo-labels as measured), "
              f"minus rl-real on `{report.control_benchmark}`, reference protocol (points).", "",
              f"![precision]({rel['precision']})", "",
              "| arm | labels | precision | minus rl-real | MDE |", "|---|---|---:|---|---:|"]
    for point in curve:
        cell = "no result" if point["flag"] else signed(point["delta"]) + (" *" if excludes_zero(point["delta"]) else "")
        lines.append(f"| {point['arm']} | {point['kind']} | {pct(point['precision'])} | {cell} | {'' if point['flag'] else pct(point['delta']['mde'])} |")
    lines += ["", f"## `{HELDOUT}` by question type", "", "Reference-protocol accuracy per arm (95% interval) and paired deltas (points).", "",
              f"![by type]({rel['by_type']})", "",
              "| type | questions | " + " | ".join(arms) + " |", "|---|---:|" + "---|" * len(arms)]
    for kind, section in by_type.items():
        lines.append(f"| {kind} | {section['questions']} | " + " | ".join(
            "no result" if report.flags[arm] else f"{pct(m)} {interval(lo, hi)}" for arm, (m, lo, hi) in section["accuracy"].items()) + " |")
    lines += ["", "| type | " + " | ".join(f"{a} vs {b}" for a, b in plan.comparisons) + " |", "|---|" + "---|" * len(plan.comparisons)]
    for kind, section in by_type.items():
        lines.append(f"| {kind} | " + " | ".join(delta_cell(report, pair, section["paired"][pair]) for pair in plan.comparisons) + " |")
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
    lines += ["", "## Training runs", "",
              "Steps with reward variance: steps in which some group's completions earned different rewards (TRL's "
              "`frac_reward_zero_std` below 1); a run with none, or whose weights equal its start's, learned nothing.", "",
              f"![training]({rel['training']})", "",
              "| run | stage | starts from | steps | steps with reward variance | groups with variance | weights changed | "
              "reward first / last | training accuracy first / last | wall (s) |",
              "|---|---|---|---:|---:|---:|---|---|---|---:|"]
    for run, done in report.training.items():
        entries = [e for e in history(done) if "reward" in e]
        first, last = (entries[0], entries[-1]) if entries else ({}, {})
        signal = report.signals[run]
        if signal is None:
            variance, groups, changed = "not recorded", "", ""
        else:
            variance = f"{signal.steps_with_variance} of {signal.steps}" + ("" if signal.learned else " (learned nothing)")
            groups = pct(signal.groups_with_variance) + "%"
            changed = {True: f"yes (max {signal.max_weight_change:.2g})", False: "**no**", None: "not compared"}[signal.weights_changed]
        lines.append(
            f"| {run} | {done['stage']} | {plan.runs[run].start} | {done['metrics'].get('global_step')} | {variance} | {groups} | {changed} | "
            f"{first.get('reward', float('nan')):.3f} / {last.get('reward', float('nan')):.3f} | "
            f"{first.get(CORRECTNESS, float('nan')):.3f} / {last.get(CORRECTNESS, float('nan')):.3f} | {done['wall_seconds']:.0f} |"
        )
    lines += ["", "## Reward targets' letters", "",
              "Letter counts of the reward targets per question type: how far a letter preference could carry a policy on its training data.", "",
              "| type | letters |", "|---|---|"]
    for kind, counts in report.arms[CHANCE]["letters"].items():
        lines.append(f"| {kind} | " + ", ".join(f"{k} {v}" for k, v in counts.items()) + " |")
    lines += ["", "## Answer letters", "",
              "Share of each model arm's samples answering each letter under the reference protocol (none: neither pass read one), "
              "beside the gold letters' shares (%). Accuracy near chance with one letter far above its gold share is a "
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
    """Write the report, publish its raw files beside it (:mod:`medssr.study.publish`) and write
    ``report/paired.json`` in the study folder (the headline numbers MLflow gets)."""
    from medssr.study.publish import publish

    report = StudyReport(study)
    by_type = report.by_type()
    report_path = Path(study.config.report).resolve()
    figures = plot_figures(report, by_type, report_path.with_suffix(""))
    write_text(report_path, markdown(report, by_type, figures, report_path))
    write_json(study.root / "report" / "paired.json", report.headline_numbers())
    publish(report, report_path.with_suffix("") / "raw")
    return report_path
