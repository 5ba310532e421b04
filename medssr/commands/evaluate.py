"""``medssr evaluate``: models side by side on the benchmarks, paper protocol by default."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.stages import STAGES

    parser = subparsers.add_parser(
        "evaluate",
        help="Evaluate one or more models on the medical benchmarks (strict/lenient accuracy, recovery rate, CIs).",
        description="Sample N answers per question (paper protocol: T 0.6, top_p 0.95, top_k 20, 2048 tokens, N 4), "
        "score strict and lenient accuracy as mean ± std over the samples with bootstrap 95%% intervals, report the "
        "constrained second pass's recovery rate beside accuracy, and compare models with deltas to the first. "
        "Every EvaluationConfig setting is an option.",
    )
    parser.add_argument("--config", help="YAML of evaluation settings, or a pipeline preset (its evaluation section); options override it.")
    stage = STAGES["evaluation"]
    add_arguments(
        parser, stage.config, stage.prefixes, required=("models",),
        skip=("model",),  # the generator's model: each of --model in turn
        aliases={"models": ("--model",), "model_names": ("--name",), "benchmarks": ("--only",), "out_dir": ("--out",),
                 "bootstrap_samples": ("--bootstrap",)},
        negations={"use_hub": ("--no-hub",)},
    )
    parser.set_defaults(func=run_evaluate_command)


def run_evaluate_command(args: argparse.Namespace) -> int:
    from medssr.configs import from_args
    from medssr.evaluation import run_evaluation
    from medssr.stages import STAGES

    stage = STAGES["evaluation"]
    config = from_args(stage.config, args, stage.prefixes, section=stage.name)
    result = run_evaluation(config)
    for label, scores in result.summary.items():
        for bench, s in scores.items():
            print(
                f"{label} {bench}: strict {100 * s['strict']['mean']:.1f} ± {100 * s['strict']['std']:.1f}, "
                f"lenient {100 * s['lenient']['mean']:.1f}, recovery rate {100 * s['recovery_rate']:.1f}% ({s['items']} items)"
            )
    for name, reason in result.skipped.items():
        print(f"skipped {name}: {reason}")
    for kind, path in result.paths.items():
        print(f"{kind}: {path}")
    return 0
