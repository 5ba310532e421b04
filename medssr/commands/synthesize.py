"""``medssr synthesize``: knowledge-grounded rare-disease questions plus seed-based items, in the mix
the config asks for; writes FILE, FILE.stats.json and FILE.stats.png."""

from __future__ import annotations


def _handle(args) -> int:
    from medssr.errors import user_input
    from medssr.generation.base import GeneratorConfig
    from medssr.synthesis import SynthesisConfig, run_synthesis

    values = {}
    if args.config:
        import dataclasses

        base = SynthesisConfig.from_yaml(args.config)
        values = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    overrides = {
        "n": args.n,
        "rare_ratio": args.rare_ratio,
        "seed": args.seed,
        "seed_questions": args.seed_questions,
        "options_per_item": args.options,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if args.decontaminate:
        values["decontaminate_against"] = list(args.decontaminate)
    with user_input():
        if args.rewrite_model:
            values["rewrite"] = True
            values["generator"] = GeneratorConfig(model=args.rewrite_model, backend=args.rewrite_backend)
        config = SynthesisConfig(**values)
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
    parser = subparsers.add_parser(
        "synthesize", help="Synthesize rare-disease questions from the HPO knowledge base (plus seed-based items)."
    )
    parser.add_argument("--out", required=True, help="Output JSONL; FILE.stats.json and FILE.stats.png go beside it.")
    parser.add_argument("--config", help="YAML with SynthesisConfig fields; the flags below override it.")
    parser.add_argument("--n", type=int, help="Total number of items (default 1000).")
    parser.add_argument("--rare-ratio", type=float, help="alpha: share of knowledge-grounded rare-disease items.")
    parser.add_argument("--seed", type=int, help="Seed; the same config and seed give the same file.")
    parser.add_argument("--seed-questions", help="Human-annotated MCQs (JSONL or reference JSON) for the 1 - alpha share.")
    parser.add_argument("--options", type=int, choices=(4, 5), help="Options per knowledge item.")
    parser.add_argument(
        "--decontaminate", action="append", metavar="PATH",
        help="Benchmark file or folder to decontaminate against (13-gram overlap); repeatable.",
    )
    parser.add_argument("--rewrite-model", help="Model that rewrites templates into prose and paraphrases seeds.")
    parser.add_argument("--rewrite-backend", default="transformers", choices=("transformers", "vllm", "openai"),
                        help="Generation backend of --rewrite-model.")
    parser.set_defaults(func=_handle)
