"""The result of a pipeline run in a dozen lines, read from its MLflow parent run.

Everything printed here is on the parent run (headline metrics and tags written by the steps), so
what a person reads at the end of ``make demo`` is what two runs are compared by in MLflow's UI.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from medssr.evaluation.registry import BENCHMARKS
from medssr.references import RegistryReference
from medssr.training.signal import FLAG_TAG_PREFIX, METRIC_PREFIX, LearningSignal

MODELS = ("base", "stage1", "stage2")
TRAINED_BY = {"stage1": "train-self", "stage2": "train-supervised"}
"""The training step whose result each evaluated model is."""
NO_RESULT = "learned nothing"
METRIC_NAMES = {
    "strict": "strict accuracy (a final 'The answer is X')",
    "lenient": "lenient accuracy",
    "with_recovery": "reference-protocol accuracy (strict, plus the forced second pass where strict reads nothing)",
}


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:4.1f}"


def _interval(metrics: dict, key: str, signed: bool = False) -> str:
    if key not in metrics:
        return "-"
    fmt = (lambda v: f"{100 * v:+.1f}") if signed else (lambda v: f"{100 * v:.1f}")
    low, high = metrics.get(f"{key}.ci_low"), metrics.get(f"{key}.ci_high")
    bounds = f" [{fmt(low)}, {fmt(high)}]" if low is not None and high is not None else ""
    return f"{fmt(metrics[key])}{bounds}"


def mlflow_ui_command(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """How a person opens this run: the server's page, or ``mlflow ui`` on the local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    mlflow = Path(sys.executable).with_name("mlflow")
    return f"{shlex.quote(str(mlflow))} ui --backend-store-uri {shlex.quote(tracking_uri)} --port 5000   (then open http://127.0.0.1:5000)"


def pipeline_summary(pipeline_run_id: str, tracking_uri: str = "", experiment: str = "medssr", wall_seconds: float | None = None) -> str:
    """The run's result: each stage's learning signal, accuracies with 95% intervals per benchmark and model,
    the paired gain of stage 2 over the base model, pseudo-label yield and precision, the gate's decision,
    the registered version."""
    from medssr.tracking import KIND_TAG, PIPELINE_RUN_TAG, Tracker, TrackingConfig

    tracker = Tracker(TrackingConfig(tracking_uri=tracking_uri, experiment=experiment))
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=1)
    if not found:
        return f"no MLflow parent run for pipeline run {pipeline_run_id}"
    parent = found[0]
    tags = parent.data.tags
    took = f" in {wall_seconds / 60:.1f} min" if wall_seconds else ""
    lines = [f"=== medssr: pipeline run {pipeline_run_id} finished{took} ===", *result_lines(parent.data.metrics, tags, parent.data.params)]
    name, version = tags.get("medssr.registered_model"), tags.get("medssr.registered_version")
    if name:
        champion = _champion(tracker, name)
        lines.append(
            f"registered: {RegistryReference(name, version=version)} (alias candidate); champion: "
            + (f"v{champion}" + (" (this run)" if champion == version else "") if champion else "none yet")
        )
    lines.append("MLflow: " + mlflow_ui_command(tracker.tracking_uri, tracker.experiment_id, parent.info.run_id))
    return "\n".join(lines)


def result_lines(metrics: dict, tags: dict, params: dict) -> list[str]:
    """The parent run's numbers as the summary prints them: each stage's learning signal, the accuracies (a
    stage that learned nothing shows no numbers), the pseudo-labels, the gate."""
    metric = params.get("promotion.metric", "lenient")
    lines = []
    flagged = {model for model, step in TRAINED_BY.items() if f"{FLAG_TAG_PREFIX}{step}" in tags}
    signals = [f"{step} {signal.describe()}" for step in TRAINED_BY.values() if (signal := _signal(metrics, step)) is not None]
    if signals:
        lines.append("learning signal: " + "; ".join(signals))
    benchmarks = sorted({key.split(".")[1] for key in metrics if key.startswith("eval.") and key.endswith(".questions")})
    if benchmarks:
        samples = params.get("evaluation.n", "?")
        lines.append(f"{METRIC_NAMES.get(metric, metric)}, %, [95% interval over questions], {samples} sample(s) per question:")
        width = max(len(b) for b in benchmarks) + 7
        lines.append(f"  {'benchmark':<{width}} {'n':>4}  " + "".join(f"{m:<20}" for m in MODELS) + "stage2 - base (paired)")
        for bench in benchmarks:
            rare = " (rare)" if bench in BENCHMARKS and BENCHMARKS[bench].rare else ""
            # A stage that learned nothing has no result of its own (its model is the one it started from).
            cells = "".join(f"{NO_RESULT if m in flagged else _interval(metrics, f'eval.{m}.{bench}.{metric}'):<20}" for m in MODELS)
            delta = NO_RESULT if flagged == set(TRAINED_BY) else _interval(metrics, f"delta.stage2_vs_base.{bench}.{metric}", signed=True)
            lines.append(f"  {bench + rare:<{width}} {int(metrics[f'eval.{bench}.questions']):>4}  {cells}{delta}")

    if "label.items" in metrics:
        items, kept = int(metrics["label.items"]), int(metrics.get("label.kept", 0))
        line = (
            f"pseudo-labels: {items} questions x {params.get('labeling.n_samples', '?')} samples; answers read free-form "
            f"{_pct(metrics.get('label.parse_rate')).strip()}%, recovered by the second pass {_pct(metrics.get('label.recovered_rate')).strip()}%; "
            f"kept {kept} (yield {_pct(metrics.get('label.yield')).strip()}%), precision vs the knowledge-base key "
            f"{_pct(metrics.get('label.precision_kept')).strip()}%"
        )
        if "label.free.precision_voted" in metrics or "label.recovered.precision_voted" in metrics:
            line += (
                f" (voted labels: free-form votes alone {_pct(metrics.get('label.free.precision_voted')).strip()}%, "
                f"recovered alone {_pct(metrics.get('label.recovered.precision_voted')).strip()}%)"
            )
        lines.append(line)

    if "medssr.gate" in tags:
        verdict = "PROMOTED" if metrics.get("gate.promoted") else ("passed" if tags["medssr.gate"] == "pass" else "REFUSED")
        lines.append(f"gate ({metric}, paired bootstrap) against {tags.get('medssr.gate_reference', '?')}: {verdict}: {tags.get('medssr.gate_reason', '')}")
        detectable = {key.removeprefix("gate.detectable."): value for key, value in sorted(metrics.items()) if key.startswith("gate.detectable.")}
        if detectable:
            resamples = f"{int(metrics['gate.resamples'])} bootstrap resamples, as the intervals above" if "gate.resamples" in metrics else ""
            lines.append(
                "gate's minimal detectable effect: it promotes with 80% probability only a true gain of "
                + ", ".join(f"{100 * value:+.1f} points on {bench}" for bench, value in detectable.items())
                + f" or more (its margin plus the paired comparison's MDE{'; ' + resamples if resamples else ''})"
            )
    return lines


def _signal(metrics: dict, step: str) -> LearningSignal | None:
    """A training step's learning signal from the parent run's ``signal.<step>.*`` metrics."""
    prefix = f"{METRIC_PREFIX}{step}."
    values = {key[len(prefix):]: value for key, value in metrics.items() if key.startswith(prefix)}
    return LearningSignal.from_dict(values) if "steps" in values else None


def _champion(tracker, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(tracker.call(tracker.client.get_model_version_by_alias, name, "champion").version)
    except MlflowException:  # no such alias yet
        return None
