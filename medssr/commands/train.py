"""``medssr train``: one GRPO stage (self = pseudo-labels, supervised = gold answers), in-process, via torchrun, or
as a PyTorchJob / TrainJob on the cluster (``--launcher``; ``--dry-run`` prints the job and submits nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUMMARY_KEYS = ("global_step", "world_size", "resumed_from_step", "records", "records_rejected", "reward_first", "reward_last", "train_runtime")


def _train(args) -> int:
    from medssr.configs import from_args
    from medssr.errors import UserError
    from medssr.stages import TrainingJobConfig
    from medssr.training.config import TrainingConfig

    config = from_args(TrainingConfig, args, section=args.stage_section, output_dir=args.output_dir)
    config.validate_paths()
    job = from_args(TrainingJobConfig, _with_job_section(args), section="training_job", launcher=args.launcher or "local")
    if job.launcher != "local":
        return _on_cluster(config, job, args)
    if args.dry_run:
        raise UserError("--dry-run prints a cluster job: give --launcher pytorchjob or trainjob")
    if args.launcher or job.nproc_per_node:
        return _torchrun(config, job.nproc_per_node or 1)

    import logging

    from medssr.training import run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run_training(config)
    _print_summary(result.model_dir, result.metrics)
    return 0


def _with_job_section(args):
    """``args`` with ``--config`` only when that file is a pipeline preset with a training_job section (a file of
    TrainingConfig fields says nothing about where training runs)."""
    import argparse

    from medssr.configs import read_yaml

    preset = bool(args.config) and isinstance(read_yaml(args.config).get("training_job"), dict)
    return argparse.Namespace(**{**vars(args), "config": args.config if preset else None})


def _torchrun(config, nproc: int) -> int:
    """Run the entry point under torchrun with the resolved config written beside the output."""
    output_dir = Path(config.output_dir)
    config_path = output_dir / "train-config.yaml"
    config.to_yaml(config_path)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "-m", "medssr.training", "--config", str(config_path),
    ]
    print("running:", " ".join(command), file=sys.stderr)
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        print(f"medssr train: torchrun exited with status {status}", file=sys.stderr)
        return status
    metrics = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
    _print_summary(output_dir, metrics)
    return 0


def cluster_job(config, job, args):
    """(launcher, JobSpec) of the cluster job for this stage: the pipeline's train step builds it the same way."""
    from medssr.errors import UserError, user_input
    from medssr.launch import build_launcher
    from medssr.stages import training_job

    if not args.run_id:
        raise UserError(f"--launcher {job.launcher} needs --run-id")
    with user_input():  # the job's settings are the options given
        launcher_config, spec = training_job(job, config, args.run_id, f"train-{config.stage}", Path(config.output_dir).parent)
    return build_launcher(launcher_config), spec


def _on_cluster(config, job, args) -> int:
    launcher, spec = cluster_job(config, job, args)
    if args.dry_run:
        from medssr.kube.manifests import manifest_yaml

        print(manifest_yaml(launcher.build_object(spec)), end="")
        return 0
    from medssr.launch import TrainingJobFailed, run_training_job

    try:
        status = run_training_job(launcher.config, spec, timeout=job.timeout_s or None)
    except TrainingJobFailed as error:
        print(f"medssr train: {error}", file=sys.stderr)
        return 1
    print(f"{launcher.kind} {launcher.config.namespace}/{spec.job_name}: {status}")
    return 0


def _print_summary(model_dir, metrics: dict) -> None:
    print(json.dumps({"model_dir": str(model_dir), **{k: metrics.get(k) for k in SUMMARY_KEYS}}))


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.stages import TrainingJobConfig
    from medssr.training.config import TrainingConfig

    parser = subparsers.add_parser(
        "train",
        help="GRPO training stage: --stage self (pseudo-labels) or supervised (gold answers).",
        description="Train one GRPO stage on TRL. Every TrainingConfig field is an option; --config YAML gives defaults.",
    )
    parser.add_argument("--out", dest="output_dir", default=None, help="Output folder: the trained model, metrics.json, log_history.jsonl, checkpoints/.")
    parser.add_argument("--config", default=None, help="YAML file of TrainingConfig fields, or a pipeline preset (its section "
                        "--stage-section); options given here override it.")
    parser.add_argument("--stage-section", default="train_self", choices=("train_self", "train_supervised"),
                        help="The section read from a pipeline preset given as --config (default train_self).")
    cluster = parser.add_argument_group(
        "where it trains (TrainingJobConfig, the pipeline's training_job settings): without --launcher in this process, "
        "or through torchrun with --nproc-per-node; with --launcher pytorchjob|trainjob the paths in the training options are the pods'")
    cluster.add_argument("--dry-run", action="store_true", help="With --launcher: print the job object as YAML; submit nothing.")
    cluster.add_argument("--run-id", default=None, help="Run id: names the job (RUN_ID-train-STAGE) and labels it.")
    add_arguments(cluster, TrainingJobConfig, aliases={"pvcs": ("--pvc",), "timeout_s": ("--timeout",)})
    add_arguments(parser, TrainingConfig, skip=("output_dir",))
    parser.set_defaults(func=_train)
