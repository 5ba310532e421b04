"""``medssr calibration DIR``: how well the samples' agreement predicts a right answer, from an evaluation folder."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.evaluation.calibration import CalibrationConfig

    parser = subparsers.add_parser(
        "calibration",
        help="Accuracy by agreement bucket and expected calibration error, from an evaluation output folder.",
        description="Read DIR/samples/<model>/<benchmark>.jsonl (what `medssr evaluate` writes), vote over each "
        "question's samples, and print per model and benchmark the accuracy of the majority letter by agreement "
        "bucket and the ECE; writes calibration.json and calibration.md to --out (default: DIR).",
    )
    parser.add_argument("folder", metavar="DIR", help="Evaluation output folder (holds samples/).")
    parser.add_argument("--out", default=None, help="Where calibration.{json,md} go (default: DIR).")
    parser.add_argument("--config", help="YAML of calibration settings (bins, letters); options override it.")
    add_arguments(parser, CalibrationConfig)
    parser.set_defaults(func=run_calibration_command)


def run_calibration_command(args: argparse.Namespace) -> int:
    from medssr.configs import from_args
    from medssr.errors import UserError
    from medssr.evaluation.calibration import CalibrationConfig, calibration_markdown, calibration_of_folder, write_calibration

    config = from_args(CalibrationConfig, args)
    try:  # what the folder holds is the user's
        resamples, seed = _bootstrap_settings(args.folder)
        result = calibration_of_folder(args.folder, config, bootstrap_samples=resamples, seed=seed)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    print(calibration_markdown(result))
    paths = write_calibration(result, args.out or args.folder)
    print(f"wrote {paths['json']} and {paths['markdown']}")
    return 0


def _bootstrap_settings(folder: str) -> tuple[int, int]:
    """The evaluation's own bootstrap resamples and seed (its ``results.json``), so the intervals are the
    report's; the evaluation's defaults for a folder without them."""
    import json
    from pathlib import Path

    from medssr.evaluation.harness import EvaluationConfig

    defaults = EvaluationConfig()
    report = Path(folder) / "results.json"
    settings = json.loads(report.read_text()).get("settings", {}) if report.is_file() else {}
    return int(settings.get("bootstrap_samples", defaults.bootstrap_samples)), int(settings.get("seed", defaults.seed))
