"""The result of a pipeline run in a dozen lines, read from its MLflow parent run.

Everything printed here is on the parent run (headline metrics and tags written by the steps), so
what a person reads at the end of ``make demo`` is what two runs are compared by in MLflow's UI.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from medssr.evaluation.registry import BENCHMARKS
from medssr.models import RegistryReference

MODELS = ("base", "stage1", "stage2")
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
    """The run's result: accuracies with 95% intervals per benchmark and model, the paired gain of stage 2
    over the base model, pseudo-label yield and precision, the gate's decision, the registered version."""
    from medssr.tracking import KIND_TAG, PIPELINE_RUN_TAG, Tracker, TrackingConfig

    tracker = Tracker(TrackingConfig(tracking_uri=tracking_uri, experiment=experiment))
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{pipeline_run_id}' and tags.`{KIND_TAG}` = 'pipeline'"
    found = tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=1)
    if not found:
        return f"no MLflow parent run for pipeline run {pipeline_run_id}"
    parent = found[0]
    metrics, tags, params = parent.data.metrics, parent.data.tags, parent.data.params
    metric = params.get("promotion.metric", "lenient")
    took = f" in {wall_seconds / 60:.1f} min" if wall_seconds else ""
    lines = [f"=== medssr: pipeline run {pipeline_run_id} finished{took} ==="]

    benchmarks = sorted({key.split(".")[1] for key in metrics if key.startswith("eval.") and key.endswith(".questions")})
    if benchmarks:
        samples = params.get("evaluation.n", "?")
        lines.append(f"{METRIC_NAMES.get(metric, metric)}, %, [95% interval over questions], {samples} sample(s) per question:")
        width = max(len(b) for b in benchmarks) + 7
        lines.append(f"  {'benchmark':<{width}} {'n':>4}  " + "".join(f"{m:<20}" for m in MODELS) + "stage2 - base (paired)")
        for bench in benchmarks:
            rare = " (rare)" if bench in BENCHMARKS and BENCHMARKS[bench].rare else ""
            cells = "".join(f"{_interval(metrics, f'eval.{m}.{bench}.{metric}'):<20}" for m in MODELS)
            delta = _interval(metrics, f"delta.stage2_vs_base.{bench}.{metric}", signed=True)
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
    name, version = tags.get("medssr.registered_model"), tags.get("medssr.registered_version")
    if name:
        champion = _champion(tracker, name)
        lines.append(
            f"registered: {RegistryReference(name, version=version)} (alias candidate); champion: "
            + (f"v{champion}" + (" (this run)" if champion == version else "") if champion else "none yet")
        )
    lines.append("MLflow: " + mlflow_ui_command(tracker.tracking_uri, tracker.experiment_id, parent.info.run_id))
    return "\n".join(lines)


def _champion(tracker, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(tracker.call(tracker.client.get_model_version_by_alias, name, "champion").version)
    except MlflowException:  # no such alias yet
        return None
