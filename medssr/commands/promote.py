"""``medssr promote NAME``: the promotion gate: print the decision table and move ``champion`` if it passes."""

from __future__ import annotations

from dataclasses import fields


def _promote(args) -> int:
    from medssr.promotion import DEFAULT_RARE_BENCHMARKS, PromotionConfig, run_promotion
    from medssr.tracking import TrackingConfig

    rare = [b.strip() for b in args.rare_benchmarks.split(",") if b.strip()] if args.rare_benchmarks else list(DEFAULT_RARE_BENCHMARKS)
    defaults = {f.name: f.default for f in fields(PromotionConfig) if f.name in ("margin", "tolerance")}
    decision = run_promotion(
        PromotionConfig(
            name=args.name,
            candidate=args.candidate,
            rare_benchmarks=rare,
            margin=defaults["margin"] if args.margin is None else args.margin,
            tolerance=defaults["tolerance"] if args.tolerance is None else args.tolerance,
            dry_run=args.dry_run,
            tracking=TrackingConfig(tracking_uri=args.tracking_uri or "", experiment=args.experiment),
        ),
        out=args.out,
    )
    return 0 if decision.passed else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "promote",
        help="Promotion gate: candidate vs champion on the rare-disease sets (exit 1 when refused).",
        description="Compare the candidate version's evaluation scores with the champion's, print the decision "
        "table, log it to MLflow, and move alias champion when the gate passes (not with --dry-run). "
        "Exit status 0: passed; 1: refused.",
    )
    parser.add_argument("name", help="Registered model name.")
    parser.add_argument("--candidate", default="candidate", help="Candidate alias or version number (default: candidate).")
    parser.add_argument("--dry-run", action="store_true", help="Decide and log, but do not move the alias.")
    parser.add_argument("--margin", type=float, help="Minimum gain on every rare-disease benchmark (default 0.01).")
    parser.add_argument("--tolerance", type=float, help="Largest allowed loss on any other benchmark (default 0.02).")
    parser.add_argument("--rare-benchmarks", help="Comma-separated rare-disease benchmarks (default raredis_heldout,raredis_sub).")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default MLFLOW_TRACKING_URI, else ./.medssr sqlite).")
    parser.add_argument("--experiment", default="medssr", help="MLflow experiment the decision run is logged in.")
    parser.add_argument("--out", help="Also write promotion.md and promotion.json into this folder.")
    parser.set_defaults(func=_promote)
