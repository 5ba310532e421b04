"""``medssr probe``: the premise probe, before a study: does the base model's own vote beat chance, per question type?"""

from __future__ import annotations


def _handle(args) -> int:
    import logging

    from medssr.configs import from_args
    from medssr.study.probe import ProbeConfig, run_probe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = from_args(ProbeConfig, args)
    table = run_probe(config)
    for row in table["types"]:
        low, high = row["ci95"]
        bounds = "n/a" if low is None else f"[{100 * low:.1f}, {100 * high:.1f}]"
        print(f"{row['question_type']:<15} precision {100 * (row['precision'] or 0):5.1f} {bounds} chance {100 * row['chance']:.1f} "
              f"-> {'goes on' if row['goes_on'] else 'stops'}")
    print(f"table: {config.out_dir}/probe.md (rule: {table['rule']})")
    return 0


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.study.probe import ProbeConfig

    parser = subparsers.add_parser("probe", help="Premise probe: the base model's majority-vote precision per question type against chance.",
                                   description=__doc__)
    parser.add_argument("--config", help="YAML of probe settings (the options below); options given here override it.")
    add_arguments(parser, ProbeConfig)
    parser.set_defaults(func=_handle)
