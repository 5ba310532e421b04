"""``medssr study``: every arm of a MedSSR study (base, chance, rl-real, self, medssr, oracle, planted-P, extra seeds), resumable, then the report.

Every StudyConfig field is an option (``--field-name``) and ``--config`` reads them from YAML. The stage
settings come from a pipeline preset (``--preset``, default study) with ``--param STAGE.SETTING=VALUE``
overrides, as in ``medssr pipeline run``; a rerun with the same settings continues the study in its
folder, and ``--arms`` runs it in parts.
"""

from __future__ import annotations

import argparse
import shlex

NOT_OPTIONS = ("command",)
"""StudyConfig fields the CLI sets itself: ``command`` is the record of this command line."""


def _as_typed(args: argparse.Namespace) -> list[str]:
    """The options given, as they would be typed again (for the report's record of each part)."""
    from medssr import configs
    from medssr.study.config import StudyConfig

    typed = ["--config", args.config] if args.config else []
    for setting in configs.settings_of(StudyConfig):
        if setting.name in NOT_OPTIONS:  # the namespace's `command` is the subcommand's name, not this field
            continue
        value = getattr(args, setting.name, None)  # None: not given
        if value is None:
            continue
        if setting.name == "params":
            typed += [item for pair in value for item in ("--param", pair)]
        else:
            typed += [f"--{setting.name.replace('_', '-')}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return typed


def run_study_command(args: argparse.Namespace) -> int:
    import logging

    from medssr.configs import from_args
    from medssr.study import StudyConfig, run_study

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = from_args(StudyConfig, args, command=shlex.join(["medssr", "study", *_as_typed(args)]))
    result = run_study(config)
    print(f"study {result.out_dir}: finished arms {', '.join(result.finished_arms) or 'none'}"
          + (f"; still to run: {', '.join(result.missing_arms)}" if result.missing_arms else ""))
    if result.report:
        print(f"report: {result.report}")
    return 0


def register(subparsers) -> None:
    from medssr import configs
    from medssr.study.config import StudyConfig

    parser = subparsers.add_parser(
        "study",
        help="Measure MedSSR: arms base, chance, rl-real, self, medssr, oracle, planted label precisions and repeated seeds on the same "
             "questions; resumable; writes the report.",
        description=__doc__,
    )
    parser.add_argument("--config", help="YAML of study settings (the fields below); options given here override it.")
    configs.add_arguments(parser, StudyConfig, skip=NOT_OPTIONS, aliases={"params": ("--param",)})
    parser.set_defaults(func=run_study_command)
