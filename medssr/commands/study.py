"""``medssr study``: every arm of a MedSSR study (base, prior, rl-real, self, medssr, oracle), resumable, then the report.

Every StudyConfig field is an option (``--field-name``); a rerun with the same settings continues the study in
its folder, and ``--arms`` runs it in parts.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    from medssr.study.config import StudyConfig
    from medssr.configs import parse_bool

    hints = typing.get_type_hints(StudyConfig)
    for spec in dataclasses.fields(StudyConfig):
        if spec.name == "command":
            continue  # set from the command line itself
        kind = hints[spec.name]
        parser.add_argument(
            f"--{spec.name.replace('_', '-')}",
            dest=spec.name,
            type=parse_bool if kind is bool else kind,
            default=spec.default,
            help=f"{spec.metadata['help']} (default: {spec.default})",
        )


def run_study_command(args: argparse.Namespace) -> int:
    import logging

    from medssr.errors import user_input
    from medssr.study import StudyConfig, run_study

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    fields = [f for f in dataclasses.fields(StudyConfig) if f.name != "command"]
    values = {f.name: getattr(args, f.name) for f in fields}
    # The command as it would be typed again: every option that differs from its default.
    given = [item for f in fields if values[f.name] != f.default for item in (f"--{f.name.replace('_', '-')}", str(values[f.name]))]
    with user_input():
        config = StudyConfig(**values, command=shlex.join(["medssr", "study", *given]))
    result = run_study(config)
    print(f"study {result.out_dir}: finished arms {', '.join(result.finished_arms) or 'none'}"
          + (f"; still to run: {', '.join(result.missing_arms)}" if result.missing_arms else ""))
    if result.report:
        print(f"report: {result.report}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "study",
        help="Measure MedSSR: arms base, prior, rl-real, self, medssr, oracle on the same questions; resumable; writes the report.",
        description=__doc__,
    )
    add_study_arguments(parser)
    parser.set_defaults(func=run_study_command)
