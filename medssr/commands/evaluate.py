"""``medssr evaluate``: models side by side on the benchmarks, paper protocol by default."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Evaluate one or more models on the medical benchmarks (strict/lenient accuracy, recovery rate, CIs).",
        description="Sample N answers per question (paper protocol: T 0.6, top_p 0.95, top_k 20, 2048 tokens, N 4), "
        "score strict and lenient accuracy as mean ± std over the samples with bootstrap 95%% intervals, report the "
        "constrained second pass's recovery rate beside accuracy, and compare models with deltas to the first.",
    )
    parser.add_argument("--model", action="append", required=True, help="Model folder / hub id / s3:// URI; repeat to compare.")
    parser.add_argument("--name", action="append", default=[], help="Display name per --model (same order), e.g. base, stage1.")
    parser.add_argument("--benchmarks", default="", help="Folder with benchmark files in the reference format.")
    parser.add_argument("--only", nargs="+", default=["all"], help="Benchmark names (default: all available).")
    parser.add_argument("--limit", type=int, default=None, help="First K questions per benchmark.")
    parser.add_argument("--n", type=int, default=4, help="Samples per question (default 4).")
    parser.add_argument("--max-tokens", type=int, default=2048, help="New tokens per sample (default 2048).")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0, help="Seed of sampling, bootstrap and the held-out set.")
    parser.add_argument("--prompt-style", choices=["chat", "text"], default="chat")
    parser.add_argument("--no-recovery", action="store_true", help="Skip the constrained second pass.")
    parser.add_argument("--no-hub", action="store_true", help="Never try the Hugging Face hub for missing benchmark files.")
    parser.add_argument("--backend", choices=["transformers", "vllm", "openai"], default="transformers")
    parser.add_argument("--base-url", default="", help="OpenAI-compatible base URL (--backend openai).")
    parser.add_argument("--batch-size", type=int, default=64, help="Sequences per forward pass (continuous batching).")
    parser.add_argument("--chunk-size", type=int, default=256, help="Questions per generation call (continuously batched; cache checkpoint).")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples.")
    parser.add_argument("--heldout-size", type=int, default=200, help="Questions in the held-out rare-disease set.")
    parser.add_argument("--cache-dir", default="", help="Completions cache (default ~/.cache/medssr/completions).")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise", help="Bad benchmark records.")
    parser.add_argument("--out", required=True, help="Report folder.")
    parser.set_defaults(func=run_evaluate_command)


def run_evaluate_command(args: argparse.Namespace) -> int:
    from medssr.errors import user_input
    from medssr.evaluation import EvaluationConfig, run_evaluation
    from medssr.generation.base import GeneratorConfig, SamplingParams

    with user_input():
        config = EvaluationConfig(
            models=args.model,
            model_names=args.name,
            benchmarks_dir=args.benchmarks,
            benchmarks=args.only,
            limit=args.limit,
            n=args.n,
            sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens),
            prompt_style=args.prompt_style,
            generator=GeneratorConfig(backend=args.backend, batch_size=args.batch_size, device=args.device, base_url=args.base_url),
            chunk_size=args.chunk_size,
            recovery=not args.no_recovery,
            cache_dir=args.cache_dir,
            out_dir=args.out,
            bootstrap_samples=args.bootstrap,
            seed=args.seed,
            use_hub=not args.no_hub,
            heldout_size=args.heldout_size,
            on_error=args.on_error,
        )
    result = run_evaluation(config)
    for label, scores in result.summary.items():
        for bench, s in scores.items():
            print(
                f"{label} {bench}: strict {100 * s['strict']['mean']:.1f} ± {100 * s['strict']['std']:.1f}, "
                f"lenient {100 * s['lenient']['mean']:.1f}, recovery rate {100 * s['recovery_rate']:.1f}% ({s['items']} items)"
            )
    for name, reason in result.skipped.items():
        print(f"skipped {name}: {reason}")
    for kind, path in result.paths.items():
        print(f"{kind}: {path}")
    return 0
