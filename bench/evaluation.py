"""Evaluation harness benchmark: questions per second, batched generation vs a per-question loop.

Both runs go through ``medssr.evaluation.run_evaluation`` on the same questions with the same model
(SmolLM2-135M-Instruct), settings and a fresh cache each, so only the batching differs:

- batched: all questions in one generation call, up to ``--batch-size`` sequences per forward pass;
- per-question loop: one question per call, batch size 1 (how a naive harness evaluates).

The constrained second pass runs in both, in the same style. Each mode's model is loaded once, before
any clock starts; the modes alternate for ``--repeats`` rounds (fresh cache each time) and the best
round of each counts. Wall time and this process's CPU time are both reported: on a shared machine
the CPU-time ratio is the stable one. The loop stops a sequence at its end-of-turn while a batch runs
to its longest member, and prompt prefill costs the same in both modes, so short ``--max-tokens``
understate what batching gives on long reasoning (the paper protocol's 2048 tokens).

    .venv/bin/python bench/evaluation.py [--questions 24] [--max-tokens 32] [--repeats 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET_SPEEDUP = 4.0
DEFAULT_BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "medssr-eval"


def generator_for(model: Path, mode: str, args):
    from medssr.generation import build_generator
    from medssr.generation.base import GeneratorConfig

    config = GeneratorConfig(model=str(model), batch_size=args.batch_size if mode == "batched" else 1, progress=False)
    return config, build_generator(config)


def measure(model: Path, mode: str, generator_config, generator, args, cache_root: Path) -> dict:
    from medssr.evaluation import EvaluationConfig, run_evaluation
    from medssr.generation.base import SamplingParams

    batched = mode == "batched"
    config = EvaluationConfig(
        models=[str(model)],
        model_names=[mode],
        benchmarks_dir=str(args.benchmarks),
        benchmarks=[args.benchmark],
        limit=args.questions,
        n=1,
        # Greedy: both modes then produce the same completions (left padding is exact), so they do the
        # same work, second pass included, and differ only in batching.
        sampling=SamplingParams(temperature=0.0, max_tokens=args.max_tokens),
        generator=generator_config,
        chunk_size=args.questions if batched else 1,
        cache_dir=str(cache_root / mode),
        out_dir=str(cache_root / f"{mode}-report"),
        bootstrap_samples=100,
        use_hub=False,
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_evaluation(config, generators={str(model): generator})
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    scores = result.summary[mode][args.benchmark]
    return {
        "mode": mode,
        "questions": scores["items"],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "questions_per_s": scores["items"] / seconds,
        "questions_per_cpu_s": scores["items"] / cpu_seconds,
        "strict_acc": scores["strict"]["mean"],
        "recovery_rate": scores["recovery_rate"],
    }


def forced_length_generation(generators, model: Path, args) -> dict[str, float]:
    """CPU seconds to generate exactly ``max_tokens`` for every question, batched vs one by one (the
    transformers backend's ``min_new_tokens``), without the harness around it."""
    from medssr.evaluation.registry import load_benchmark
    from medssr.generation.base import SamplingParams
    from medssr.prompts import build_messages

    items = load_benchmark(args.benchmark, args.benchmarks, limit=args.questions).items
    prompts = [build_messages(item) for item in items]
    sampling = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    seconds = {}
    for mode, (_, generator) in generators.items():
        started = time.process_time()
        calls = [prompts] if mode == "batched" else [[prompt] for prompt in prompts]
        for call in calls:
            generator.generate(call, n=1, sampling=sampling, min_new_tokens=args.max_tokens)
        seconds[mode] = time.process_time() - started
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--benchmark", default="medmcqa")
    parser.add_argument("--benchmarks", type=Path, default=DEFAULT_BENCHMARKS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="Alternating rounds; the best of each mode counts.")
    parser.add_argument("--out", type=Path, default=None, help="Write the figures as JSON here.")
    args = parser.parse_args(argv)

    import torch

    from medssr.models import build_smollm2

    torch.set_num_threads(args.threads)
    model = build_smollm2()
    generators = {mode: generator_for(model, mode, args) for mode in ("batched", "loop")}
    rounds = []
    with tempfile.TemporaryDirectory(prefix="medssr-bench-eval-") as tmp:
        for repeat in range(args.repeats):
            for mode, (config, generator) in generators.items():
                rounds.append(measure(model, mode, config, generator, args, Path(tmp) / str(repeat)))
    best = {mode: {"questions_per_s": max(r["questions_per_s"] for r in rounds if r["mode"] == mode),
                   "questions_per_cpu_s": max(r["questions_per_cpu_s"] for r in rounds if r["mode"] == mode)}
            for mode in generators}
    forced = forced_length_generation(generators, model, args)
    speedup = best["batched"]["questions_per_s"] / best["loop"]["questions_per_s"]
    cpu_speedup = best["batched"]["questions_per_cpu_s"] / best["loop"]["questions_per_cpu_s"]
    print(f"model SmolLM2-135M-Instruct, {args.questions} {args.benchmark} questions, n=1, max_tokens {args.max_tokens}, "
          f"{args.threads} threads, {args.repeats} alternating rounds")
    for run in rounds:
        print(f"{run['mode']:>8}: {run['questions']} questions in {run['seconds']:.1f} s wall / {run['cpu_seconds']:.1f} s CPU = "
              f"{run['questions_per_s']:.3f} questions/s ({run['questions_per_cpu_s']:.3f} per CPU-s); "
              f"strict acc {run['strict_acc']:.2f}, recovery rate {run['recovery_rate']:.2f}")
    print(f"generation only, every sequence forced to {args.max_tokens} new tokens (decode-bound, like long reasoning): "
          f"batched {forced['batched']:.1f} s CPU, loop {forced['loop']:.1f} s CPU = {forced['loop'] / forced['batched']:.2f}x")
    print(f"speed-up batched / per-question loop (best rounds): wall {speedup:.2f}x, CPU time {cpu_speedup:.2f}x "
          f"(target >= {TARGET_SPEEDUP:.0f}x) {'PASS' if max(speedup, cpu_speedup) >= TARGET_SPEEDUP else 'BELOW TARGET'}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_evaluation.json").write_text(json.dumps({"rounds": rounds, "speedup_wall": speedup, "speedup_cpu": cpu_speedup, "forced_length_cpu_s": forced}, indent=2))
    return 0 if max(speedup, cpu_speedup) >= TARGET_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
