"""``medssr synthesize``: knowledge-grounded rare-disease questions plus seed-based items, in the mix
the config asks for; writes FILE, FILE.stats.json and FILE.stats.png.

Every SynthesisConfig setting is an option (the settings of the pipeline's ``synthesis`` mapping; the rewrite
generator's as ``--rewrite-*``); ``--config`` reads them from YAML, a pipeline preset included."""

from __future__ import annotations


def _handle(args) -> int:
    from medssr.configs import from_args
    from medssr.stages import STAGES
    from medssr.synthesis import run_synthesis

    stage = STAGES["synthesis"]
    config = from_args(stage.config, args, stage.prefixes, section=stage.name)
    result = run_synthesis(config, args.out)
    stats = result.stats
    print(f"wrote {stats['n_written']} items to {result.path}")
    print(f"  knowledge (rare) items: {stats['knowledge_items']}, seed-based items: {stats['seed_items']}")
    print(f"  rare share requested {stats['requested']['rarity'].get('rare', 0):.3f}, "
          f"achieved {stats['achieved']['rarity'].get('rare', 0):.3f}")
    print(f"  shortfall: {stats['shortfall']['knowledge']} knowledge, {stats['shortfall']['seed']} seed")
    print(f"  duplicates removed: {stats['dedup']['exact_duplicate']} exact, {stats['dedup']['near_duplicate']} near; "
          f"contaminated removed: {stats['decontamination']['contaminated']}")
    if stats["rewrite"]:
        print(f"  rewrite: {stats['rewrite']}")
    if stats["paraphrase"]:
        print(f"  paraphrase: {stats['paraphrase']}")
    print(f"  stats: {result.stats_path}\n  chart: {result.chart_path}")
    return 0


def register(subparsers) -> None:
    from medssr.configs import add_arguments
    from medssr.stages import STAGES

    parser = subparsers.add_parser(
        "synthesize", help="Synthesize rare-disease questions from the HPO knowledge base (plus seed-based items)."
    )
    parser.add_argument("--out", required=True, help="Output JSONL; FILE.stats.json and FILE.stats.png go beside it.")
    parser.add_argument("--config", help="YAML of synthesis settings, or a pipeline preset (its synthesis section); options override it.")
    stage = STAGES["synthesis"]
    add_arguments(parser, stage.config, stage.prefixes, aliases={"options_per_item": ("--options",), "decontaminate_against": ("--decontaminate",)})
    parser.set_defaults(func=_handle)
