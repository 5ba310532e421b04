"""``medssr pipeline compile|submit|run|params``: the KFP pipeline, compiled, sent to a KFP host, or run here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from medssr.cluster import PIPELINE_SERVICE_ACCOUNT, ClusterSettings


def _settings(path: str | None):
    from medssr.errors import user_input

    with user_input():  # the user's settings file
        return ClusterSettings.from_yaml(path) if path else ClusterSettings()


def _compile(args) -> int:
    from medssr.pipelines.runner import compile_pipeline

    out = compile_pipeline(args.out, _settings(args.settings))
    print(f"compiled pipeline -> {out}")
    return 0


def _params(args) -> int:
    """Every run parameter and every setting of every stage, with its value (default, or the preset's) and help."""
    from medssr.pipelines.presets import preset_params
    from medssr.pipelines.runner import merged, pipeline_defaults
    from medssr.stages import STAGES

    values = pipeline_defaults()
    if args.preset:
        values = merged(values, preset_params(args.preset))
    rows = [(key, json.dumps(value), "") for key, value in values.items() if not isinstance(value, dict)]
    for name, stage in STAGES.items():
        rows += [(f"{name}.{s.name}", json.dumps(values[name].get(s.name)), s.help) for s in stage.settings()]
    width = max(len(row[0]) for row in rows)
    value_width = min(24, max(len(row[1]) for row in rows))
    for key, value, help_text in rows:
        print(f"{key:<{width}}  {value:<{value_width}}  {help_text}".rstrip())
    return 0


def _submit(args) -> int:
    from medssr.errors import user_input
    from medssr.pipelines.presets import preset_params
    from medssr.pipelines.runner import merged, parse_overrides, pipeline_defaults, resolved_params, submit

    with user_input():
        overrides = merged(preset_params(args.preset, local=False), parse_overrides(args.param or [], pipeline_defaults()))
    overrides.setdefault("experiment", args.experiment)
    params = resolved_params(overrides)
    result = submit(args.host, params, experiment=args.experiment, package=args.package, namespace=args.namespace,
                    service_account=args.service_account)
    print(f"submitted run {result.run_id} (medssr run id {params['run_id']}) to {args.host}, experiment {args.experiment}")
    return 0


def _run(args) -> int:
    from medssr.errors import UserError, user_input
    from medssr.lifetime import RunInProgress
    from medssr.pipelines.presets import preset_params
    from medssr.pipelines.runner import (
        last_local_run, merged, parse_overrides, pipeline_defaults, resolved_params, run_local, stage_timings,
        step_logs_folder, timing_report,
    )
    from medssr.pipelines.summary import pipeline_summary

    if not args.local:
        raise UserError("only --local runs are executed here; use `medssr pipeline submit --host URL` for a cluster")
    with user_input():
        overrides = merged(preset_params(args.preset), parse_overrides(args.param or [], pipeline_defaults()))
    if args.resume:
        last = last_local_run(args.pipeline_root)
        if overrides.get("run_id", "") not in ("", last):
            raise UserError(f"--resume continues the last run, {last}; to resume {overrides['run_id']}, give only --param run_id=...")
        overrides["run_id"] = last
    params = resolved_params(overrides)
    print(f"medssr pipeline run {params['run_id']} (preset {args.preset}, kfp.local subprocesses)", flush=True)
    try:
        run = run_local(params, args.pipeline_root, verbose=args.verbose)
    except RunInProgress as exc:
        raise UserError(str(exc)) from None
    except RuntimeError as exc:  # kfp.local: a task failed; its log (shown above) carries the traceback
        reason = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours its messages
        logs = "" if args.verbose else f" (step logs: {step_logs_folder(args.pipeline_root, params['run_id'])})"
        raise UserError(f"pipeline run {params['run_id']} failed: {reason}{logs}") from None
    print(f"\npipeline {params['run_id']} succeeded; outputs under {run.pipeline_root}" + (f", step logs in {run.logs}" if run.logs else ""))
    print(timing_report(run.wall_seconds, stage_timings(params["run_id"], params["tracking_uri"], params["experiment"]), run.step_seconds))
    print()
    print(pipeline_summary(params["run_id"], params["tracking_uri"], params["experiment"], run.wall_seconds))
    return 0


def register(subparsers) -> None:
    from medssr.pipelines.presets import PRESETS

    parser = subparsers.add_parser("pipeline", help="Compile, submit or locally run the MedSSR Kubeflow pipeline.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    compile_ = actions.add_parser("compile", help="Compile the pipeline to KFP IR YAML.")
    compile_.add_argument("--out", default=str(Path("pipelines") / "compiled" / "medssr.yaml"), help="Output YAML file.")
    compile_.add_argument("--settings", help="YAML of cluster settings (Secrets, ConfigMap, PVC, GPUs); default: manifests/ names.")
    compile_.set_defaults(func=_compile)

    params = actions.add_parser("params", help="List every pipeline parameter (STAGE.SETTING) with its default and help, or a preset's values.")
    params.add_argument("--preset", choices=list(PRESETS), help="Show a preset's values (as a local run gets them).")
    params.set_defaults(func=_params)

    submit = actions.add_parser("submit", help="Submit the compiled pipeline as a run to a KFP API server.")
    submit.add_argument("--host", required=True, help="KFP API server URL, e.g. http://localhost:8888.")
    submit.add_argument("--experiment", default="medssr", help="KFP experiment (also the MLflow experiment).")
    submit.add_argument("--preset", choices=list(PRESETS), default="paper",
                        help="Parameters to start from (pipelines/presets/NAME.yaml); default paper: Qwen3-8B-Base on GPUs.")
    submit.add_argument("--param", action="append", metavar="KEY=VALUE",
                        help="Override one parameter: a run parameter (run_id=...) or a stage's setting (labeling.max_tokens=96); repeatable.")
    submit.add_argument("--package", help="Compiled pipeline YAML; default: the committed pipelines/compiled/medssr.yaml.")
    submit.add_argument("--namespace", help="Kubeflow profile namespace (multi-user installs).")
    submit.add_argument("--service-account", default=PIPELINE_SERVICE_ACCOUNT,
                        help="Kubernetes ServiceAccount the steps run as ('' for KFP's default).")
    submit.set_defaults(func=_submit)

    run = actions.add_parser("run", help="Run the pipeline here with kfp.local (each step a subprocess).")
    run.add_argument("--local", action="store_true", help="Run with kfp.local (required: the only mode here).")
    run.add_argument("--preset", choices=list(PRESETS), default="tiny",
                     help="tiny: random tiny model; smol: SmolLM2-135M demo; study: the medssr arm of `medssr study` at its defaults "
                          "(pipelines/presets/NAME.yaml; `medssr pipeline params --preset NAME` lists one).")
    run.add_argument("--param", action="append", metavar="KEY=VALUE",
                     help="Override one parameter: a run parameter (run_id=...) or a stage's setting (labeling.max_tokens=96); repeatable.")
    run.add_argument("--resume", action="store_true",
                     help="Continue the last local run under this pipeline root (its run id): the stages that finished are "
                          "reused, the rest run. The same as --param run_id=THAT_ID.")
    run.add_argument("--pipeline-root", help="Where kfp.local keeps step outputs; default .medssr/kfp.")
    run.add_argument("--verbose", action="store_true",
                     help="Stream every step's output to the console (default: one line per step, logs under the pipeline root).")
    run.set_defaults(func=_run)
