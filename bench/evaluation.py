"""Evaluation harness benchmark: questions per second, batched generation vs a per-question loop.

Both runs go through ``medssr.evaluation.run_evaluation`` on the same questions with the same model
(SmolLM2-135M-Instruct), settings and a fresh cache each, so only the batching differs:

- batched: all questions in one generation call, up to ``--batch-size`` sequences per forward pass;
- per-question loop: one question per call, batch size 1 (how a naive harness evaluates).

The constrained second pass runs in both, in the same style. The model is loaded once per mode before
the clock starts. The loop stops a sequence at its end-of-turn while a batch runs to its longest
member, so the ratio is, if anything, understated.

    .venv/bin/python bench/evaluation.py [--questions 16] [--max-tokens 32] [--benchmark medmcqa] [--out DIR]
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


def measure(model: Path, mode: str, args, cache_root: Path) -> dict:
    from medssr.evaluation import EvaluationConfig, run_evaluation
    from medssr.generation import build_generator
    from medssr.generation.base import GeneratorConfig, SamplingParams

    batched = mode == "batched"
    generator_config = GeneratorConfig(model=str(model), batch_size=args.batch_size if batched else 1, progress=False)
    generator = build_generator(generator_config)
    config = EvaluationConfig(
        models=[str(model)],
        model_names=[mode],
        benchmarks_dir=str(args.benchmarks),
        benchmarks=[args.benchmark],
        limit=args.questions,
        n=1,
        sampling=SamplingParams(max_tokens=args.max_tokens, seed=0),
        generator=generator_config,
        chunk_size=args.questions if batched else 1,
        cache_dir=str(cache_root / mode),
        out_dir=str(cache_root / f"{mode}-report"),
        bootstrap_samples=100,
        use_hub=False,
    )
    started = time.perf_counter()
    result = run_evaluation(config, generators={str(model): generator})
    seconds = time.perf_counter() - started
    scores = result.summary[mode][args.benchmark]
    return {
        "mode": mode,
        "questions": scores["items"],
        "seconds": seconds,
        "questions_per_s": scores["items"] / seconds,
        "strict_acc": scores["strict"]["mean"],
        "recovery_rate": scores["recovery_rate"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--benchmark", default="medmcqa")
    parser.add_argument("--benchmarks", type=Path, default=DEFAULT_BENCHMARKS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Write the figures as JSON here.")
    args = parser.parse_args(argv)

    import torch

    from medssr.models import build_smollm2

    torch.set_num_threads(args.threads)
    model = build_smollm2()
    with tempfile.TemporaryDirectory(prefix="medssr-bench-eval-") as tmp:
        runs = [measure(model, mode, args, Path(tmp)) for mode in ("batched", "loop")]
    batched, loop = runs
    speedup = batched["questions_per_s"] / loop["questions_per_s"]
    print(f"model SmolLM2-135M-Instruct, {args.questions} {args.benchmark} questions, n=1, max_tokens {args.max_tokens}, "
          f"{args.threads} threads")
    for run in runs:
        print(f"{run['mode']:>8}: {run['questions']} questions in {run['seconds']:.1f} s = {run['questions_per_s']:.3f} questions/s "
              f"(strict acc {run['strict_acc']:.2f}, recovery rate {run['recovery_rate']:.2f})")
    print(f"speed-up batched / per-question loop: {speedup:.2f}x (target >= {TARGET_SPEEDUP:.0f}x)"
          f" {'PASS' if speedup >= TARGET_SPEEDUP else 'BELOW TARGET'}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_evaluation.json").write_text(json.dumps({"runs": runs, "speedup": speedup}, indent=2))
    return 0 if speedup >= TARGET_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
