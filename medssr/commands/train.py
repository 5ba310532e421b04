"""``medssr train``: one GRPO stage (self = pseudo-labels, supervised = gold answers), in-process or via torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SUMMARY_KEYS = ("global_step", "world_size", "resumed_from_step", "records", "records_rejected", "reward_first", "reward_last", "train_runtime")


def _train(args) -> int:
    from medssr.cli import CLIError
    from medssr.training.config import config_from_args

    config = config_from_args(args, args.config)
    config.validate_paths()
    if args.nproc_per_node is not None:
        if args.nproc_per_node < 1:
            raise CLIError("--nproc-per-node must be at least 1")
        return _torchrun(config, args.nproc_per_node)

    import logging

    from medssr.training import run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run_training(config)
    _print_summary(result.model_dir, result.metrics)
    return 0


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


def _print_summary(model_dir, metrics: dict) -> None:
    print(json.dumps({"model_dir": str(model_dir), **{k: metrics.get(k) for k in SUMMARY_KEYS}}))


def register(subparsers) -> None:
    from medssr.training.config import add_config_arguments

    parser = subparsers.add_parser(
        "train",
        help="GRPO training stage: --stage self (pseudo-labels) or supervised (gold answers).",
        description="Train one GRPO stage on TRL. Every TrainingConfig field is an option; --config YAML gives defaults.",
    )
    parser.add_argument("--out", dest="output_dir", default=None, help="Output folder: the trained model, metrics.json, log_history.jsonl, checkpoints/.")
    parser.add_argument("--config", default=None, help="YAML file of TrainingConfig fields; options given here override it.")
    parser.add_argument(
        "--nproc-per-node", type=int, default=None,
        help="Run through torchrun with this many processes (data parallel; gloo on CPU) instead of in-process.",
    )
    add_config_arguments(parser, skip=("output_dir",))
    parser.set_defaults(func=_train)
