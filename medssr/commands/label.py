"""``medssr label``: pseudo-label questions by the policy's own majority vote, with an audit.

Every LabelingConfig setting is an option (``medssr.configs``, the settings the pipeline's ``labeling``
mapping has); ``--config`` reads them from YAML, a pipeline preset included (its ``labeling`` section), so
``medssr label --config pipelines/presets/tiny.yaml --model M --data D --out O`` labels as the tiny run does.
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.stages import STAGES

    parser = subparsers.add_parser(
        "label",
        help="Pseudo-label MCQ items by majority vote over the policy's sampled answers (+ audit).",
        description="Sample N answers per question, majority-vote, keep MIN <= agreement <= MAX, write the labelled "
        "JSONL with the votes, and audit precision against the knowledge-base key where items carry one.",
    )
    parser.add_argument("--config", help="YAML of labelling settings, or a pipeline preset (its labeling section); options override it.")
    stage = STAGES["labeling"]
    add_arguments(parser, stage.config, stage.prefixes)
    parser.set_defaults(func=run_label_command)


def run_label_command(args: argparse.Namespace) -> int:
    from medssr.configs import from_args
    from medssr.labeling import run_labeling
    from medssr.stages import STAGES

    stage = STAGES["labeling"]
    result = run_labeling(from_args(stage.config, args, stage.prefixes, section=stage.name))
    report = result.audit
    print(
        f"labelled {report['kept']} of {report['items']} items (yield {report['yield']:.1%}); "
        f"dropped {report['dropped'] or 'none'}; rejected records {result.rejected_records}"
    )
    precision = report["precision_kept"]["precision"]
    if precision is not None:
        print(f"precision of kept labels vs knowledge-base key: {precision:.1%} ({report['precision_kept']['n']} keyed)")
    for kind, path in result.paths.items():
        print(f"{kind}: {path}")
    return 0
