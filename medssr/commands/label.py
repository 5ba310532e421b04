"""``medssr label``: pseudo-label questions by the policy's own majority vote, with an audit."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "label",
        help="Pseudo-label MCQ items by majority vote over the policy's sampled answers (+ audit).",
        description="Sample N answers per question, majority-vote, keep MIN <= agreement <= MAX, write the labelled "
        "JSONL with the votes, and audit precision against the knowledge-base key where items carry one.",
    )
    parser.add_argument("--model", required=True, help="Model folder, hub id or s3:// URI (served name for --backend openai).")
    parser.add_argument("--data", required=True, help="Input JSONL of MCQ items.")
    parser.add_argument("--out", required=True, help="Output JSONL of kept, labelled items.")
    parser.add_argument("--n-samples", type=int, default=8, help="Answers per question (default 8).")
    parser.add_argument("--min-agreement", type=float, default=0.5, help="Lowest kept agreement (default 0.5).")
    parser.add_argument("--max-agreement", type=float, default=0.9, help="Highest kept agreement (default 0.9: drops unanimous).")
    parser.add_argument("--min-parsed", type=int, default=None, help="Fewest parsed answers (default: half of --n-samples).")
    parser.add_argument("--max-tokens", type=int, default=None, help="New tokens per answer (default 1024).")
    parser.add_argument("--temperature", type=float, default=None, help="Sampling temperature (default 1.0, as GRPO rollouts).")
    parser.add_argument("--seed", type=int, default=None, help="Sampling seed.")
    parser.add_argument("--extraction", choices=["lenient", "strict"], default="lenient", help="Answer extraction mode.")
    parser.add_argument("--prompt-style", choices=["chat", "text"], default="chat", help="Chat messages or plain text.")
    parser.add_argument("--backend", choices=["transformers", "vllm", "openai"], default="transformers")
    parser.add_argument("--base-url", default="", help="OpenAI-compatible base URL (--backend openai).")
    parser.add_argument("--batch-size", type=int, default=64, help="Sequences per forward pass (continuous batching).")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N].")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="Bad input records: stop or skip.")
    parser.add_argument("--cache-dir", default="", help="Completions cache (default ~/.cache/medssr/completions).")
    parser.set_defaults(func=run_label_command)


def run_label_command(args: argparse.Namespace) -> int:
    import dataclasses
    import math

    from medssr.generation.base import GeneratorConfig
    from medssr.labeling import LABELING_SAMPLING, LabelingConfig, run_labeling

    config = LabelingConfig(
        data=args.data,
        out=args.out,
        generator=GeneratorConfig(
            backend=args.backend, model=args.model, batch_size=args.batch_size, device=args.device, base_url=args.base_url
        ),
        n_samples=args.n_samples,
        sampling=dataclasses.replace(
            LABELING_SAMPLING,
            max_tokens=LABELING_SAMPLING.max_tokens if args.max_tokens is None else args.max_tokens,
            temperature=LABELING_SAMPLING.temperature if args.temperature is None else args.temperature,
            seed=args.seed,
        ),
        min_agreement=args.min_agreement,
        max_agreement=args.max_agreement,
        min_parsed=args.min_parsed if args.min_parsed is not None else max(1, math.ceil(args.n_samples / 2)),
        extraction=args.extraction,
        prompt_style=args.prompt_style,
        on_error=args.on_error,
        cache_dir=args.cache_dir,
    )
    result = run_labeling(config)
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
