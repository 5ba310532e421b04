"""``python -m medssr.training --config CFG.yaml [--learning-rate 1e-6 ...]``: one GRPO stage, once per torchrun rank."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from medssr.configs import add_arguments, from_args
from medssr.training.config import TrainingConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medssr.training", description=__doc__, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file of TrainingConfig fields; options given here override it.")
    add_arguments(parser, TrainingConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s",
    )
    from medssr.training import run_training

    try:
        config = from_args(TrainingConfig, args)
        result = run_training(config)
    except (ValueError, FileNotFoundError) as exc:
        print(f"medssr.training: error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        keys = ("global_step", "world_size", "resumed_from_step", "reward_first", "reward_last", "train_runtime", "learning_signal")
        summary = {k: result.metrics.get(k) for k in keys}
        print(json.dumps({"model_dir": str(result.model_dir), **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
