"""``medssr promote NAME``: the promotion gate: print the decision table and move ``champion`` if it passes."""

from __future__ import annotations

from dataclasses import MISSING, fields

# PromotionConfig fields offered as options, with their declared defaults and help.
GATE_OPTIONS = ("metric", "margin", "tolerance", "level", "resamples", "seed")


def _promote(args) -> int:
    from medssr.errors import user_input
    from medssr.promotion import DEFAULT_RARE_BENCHMARKS, PromotionConfig, run_promotion
    from medssr.tracking import TrackingConfig

    rare = [b.strip() for b in args.rare_benchmarks.split(",") if b.strip()] if args.rare_benchmarks else list(DEFAULT_RARE_BENCHMARKS)
    with user_input():
        config = PromotionConfig(
            name=args.name,
            candidate=args.candidate,
            rare_benchmarks=rare,
            dry_run=args.dry_run,
            tracking=TrackingConfig(tracking_uri=args.tracking_uri or "", experiment=args.experiment),
            **{name: getattr(args, name) for name in GATE_OPTIONS},
        )
    decision = run_promotion(config, out=args.out)
    return 0 if decision.passed else 1


def register(subparsers) -> None:
    from medssr.promotion import PromotionConfig

    parser = subparsers.add_parser(
        "promote",
        help="Promotion gate: candidate vs champion (or its base model) on the rare-disease sets, paired (exit 1 when refused).",
        description="Compare the candidate version with the champion on the questions both answered (paired bootstrap "
        "of the accuracy difference; with no champion, with the candidate's own base model), print the decision "
        "table, log it to MLflow, and move alias champion when the gate passes (not with --dry-run). "
        "Exit status 0: passed; 1: refused.",
    )
    parser.add_argument("name", help="Registered model name.")
    parser.add_argument("--candidate", default="candidate", help="Candidate alias or version number (default: candidate).")
    parser.add_argument("--dry-run", action="store_true", help="Decide and log, but do not move the alias.")
    for spec in fields(PromotionConfig):
        if spec.name in GATE_OPTIONS:
            default = spec.default if spec.default is not MISSING else None
            parser.add_argument(f"--{spec.name}", type=type(default), default=default,
                                help=f"{spec.metadata['help']} (default {default}).")
    parser.add_argument("--rare-benchmarks", help="Comma-separated rare-disease benchmarks (default raredis_heldout,raredis_sub).")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else ./.medssr sqlite).")
    parser.add_argument("--experiment", default="medssr", help="MLflow experiment the decision run is logged in.")
    parser.add_argument("--out", help="Also write promotion.md and promotion.json into this folder.")
    parser.set_defaults(func=_promote)
