"""``medssr promote NAME``: the promotion gate: print the decision table and move ``champion`` if it passes.

Every PromotionConfig setting is an option (the pipeline's ``promotion`` mapping, its MLflow settings
included); ``--config`` reads them from YAML, a pipeline preset included."""

from __future__ import annotations


def _promote(args) -> int:
    from medssr.configs import from_args
    from medssr.promotion import run_promotion
    from medssr.stages import STAGES

    stage = STAGES["promotion"]
    decision = run_promotion(from_args(stage.config, args, stage.prefixes, section=stage.name), out=args.out)
    return 0 if decision.passed else 1


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.stages import STAGES

    parser = subparsers.add_parser(
        "promote",
        help="Promotion gate: candidate vs champion (or its base model) on the rare-disease sets, paired (exit 1 when refused).",
        description="Compare the candidate version with the champion on the questions both answered (paired bootstrap "
        "of the accuracy difference; with no champion, with the candidate's own base model), print the decision "
        "table, log it to MLflow, and move alias champion when the gate passes (not with --dry-run). "
        "Exit status 0: passed; 1: refused.",
    )
    parser.add_argument("--config", help="YAML of promotion settings, or a pipeline preset (its promotion section); options override it.")
    stage = STAGES["promotion"]
    add_arguments(parser, stage.config, stage.prefixes, positional={"name": "NAME"})
    parser.add_argument("--out", help="Also write promotion.md and promotion.json into this folder.")
    parser.set_defaults(func=_promote)
