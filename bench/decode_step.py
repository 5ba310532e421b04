"""Decode-step benchmark: what one SmolLM2 decode step costs by rows and precision, through the model's
forward pass and through medssr's fused step, and how many operators each runs.

Both rollouts (TRL's ``model.generate`` and ours) and both serving policies run one forward pass per
generated token, so the cost of one step with few rows bounds how much faster any batching policy can
be. For 1, 8 and 16 rows (each with a 200-token cached prompt in the generator's in-place cache), in one
process: float32, bf16 autocast over float32 weights (the trainer's bf16 on a CPU), and bf16 weights;
for each, the generator's step through transformers' forward pass and through
:class:`~medssr.generation.decode_step.FusedDecodeStep` (in float32 the generator with the fused step
on decodes through the forward pass as well: the step runs in half precision only), measured
alternately: the median of ``--steps`` steps after 5 warm-up steps, the aten operators one step
dispatches (torch.profiler), and, for scale, one 8 x 576 x 576 matmul and one tiny add. Then the
prefill that joins rows to a batch (bf16 weights): 1, 4 and 16 prompts of real MedMCQA questions through
the forward pass (one per prompt) and through the fused step (all in one pass), alternately, the median
of ``--prefills`` calls each.

    .venv/bin/python bench/decode_step.py [--threads 2] [--steps 30] [--prefills 7] [--model DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import record

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT_TOKENS = 200


def step_costs(generators, rows: int, autocast: bool, steps: int) -> list[tuple[float, int]]:
    """(median ms per decode step, aten operators per step) of each generator's step, for ``rows`` rows
    over a cached prompt; the generators' steps alternate so both see the same machine."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from medssr.generation.transformers_backend import _Running

    prompt = torch.randint(100, 1000, (PROMPT_TOKENS,)).tolist()
    precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with torch.no_grad(), precision:
        batches = []
        for generator in generators:
            cache, mask, positions, logits = generator._prefill([prompt] * rows)
            made = torch.zeros(rows, dtype=torch.long)
            batches.append((generator, _Running(cache, mask, positions, logits, [(r, 0) for r in range(rows)], made)))
        tokens = torch.full((rows,), prompt[-1])
        for _ in range(5):
            for generator, running in batches:
                running.feed(generator.step, tokens)
        times = [[] for _ in batches]
        for _ in range(steps):
            for spent, (generator, running) in zip(times, batches):
                start = time.perf_counter()
                running.feed(generator.step, tokens)
                spent.append(time.perf_counter() - start)
        operators = []
        for generator, running in batches:
            with profile(activities=[ProfilerActivity.CPU]) as trace:
                running.feed(generator.step, tokens)
            operators.append(sum(event.count for event in trace.key_averages()))
    return [(1000 * statistics.median(spent), ops) for spent, ops in zip(times, operators)]


def prefill_costs(generators, prompts: list[list[int]], calls: int) -> list[float]:
    """Median ms of ``generator._prefill(prompts)`` for each generator, calls alternating, after one warm-up each."""
    import torch

    times = [[] for _ in generators]
    with torch.inference_mode():
        for generator in generators:
            generator._prefill(prompts)
        for _ in range(calls):
            for spent, generator in zip(times, generators):
                start = time.perf_counter()
                generator._prefill(prompts)
                spent.append(time.perf_counter() - start)
    return [1000 * statistics.median(spent) for spent in times]


def question_prompts(tokenizer, count: int) -> list[list[int]]:
    """The chat prompts of the first ``count`` MedMCQA questions of the benchmark file, as token ids."""
    from medssr.data import read_reference_benchmark
    from medssr.locations import benchmarks_dir

    path = benchmarks_dir() / "test_short_medmcqa.json"
    prompts = []
    for item in read_reference_benchmark(path).records[:count]:
        text = tokenizer.apply_chat_template([{"role": "user", "content": item.render()}], tokenize=False, add_generation_prompt=True)
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    return prompts


def per_call_us(function, calls: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return 1e6 * (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--steps", type=int, default=30, help="measured decode steps per setting.")
    parser.add_argument("--prefills", type=int, default=7, help="measured prefill calls per setting.")
    parser.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M-Instruct, built into the cache).")
    record.add_arguments(parser)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medssr.generation.transformers_backend import TransformersGenerator
    from medssr.models import build_smollm2

    torch.set_num_threads(args.threads)
    path = args.model or str(build_smollm2())
    tokenizer = AutoTokenizer.from_pretrained(path)
    float32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    bfloat16 = copy.deepcopy(float32).to(torch.bfloat16)
    settings = (("float32", float32, False), ("bf16 autocast", float32, True), ("bf16 weights", bfloat16, False))
    print(f"SmolLM2 decode step, {PROMPT_TOKENS}-token cached prompt, {args.threads} torch threads, median of {args.steps} steps")
    print(f"{'rows':>4}  {'precision':14s} {'forward ms':>10} {'fused ms':>9} {'forward/fused':>13} {'ops forward':>11} {'ops fused':>9}")
    steps, prefills = [], []
    for rows in (1, 8, 16):
        for name, model, autocast in settings:
            generators = [TransformersGenerator.on_model(model, tokenizer, rows, fused_decode=fused) for fused in (False, True)]
            (forward, forward_ops), (fused, fused_ops) = step_costs(generators, rows, autocast, args.steps)
            print(f"{rows:>4}  {name:14s} {forward:10.1f} {fused:9.1f} {forward / fused:12.2f}x {forward_ops:11d} {fused_ops:9d}", flush=True)
            steps.append([rows, name, forward, fused, forward / fused, f"{forward_ops:,} / {fused_ops:,}"])
    x, w = torch.randn(8, 576), torch.randn(576, 576)
    print(f"one 8 x 576 x 576 matmul: {per_call_us(lambda: torch.mm(x, w)):.1f} us; one tiny add: {per_call_us(lambda: x.add(1.0)):.1f} us")
    prompts = question_prompts(tokenizer, 16)
    generators = [TransformersGenerator.on_model(bfloat16, tokenizer, 16, fused_decode=fused) for fused in (False, True)]
    print(f"prefill, bf16 weights, median of {args.prefills} calls")
    print(f"{'prompts':>7} {'tokens':>6} {'forward ms':>10} {'fused ms':>9} {'forward/fused':>13}")
    for count in (1, 4, 16):
        forward, fused = prefill_costs(generators, prompts[:count], args.prefills)
        print(f"{count:>7} {sum(map(len, prompts[:count])):>6} {forward:10.1f} {fused:9.1f} {forward / fused:12.2f}x", flush=True)
        prefills.append([count, sum(map(len, prompts[:count])), forward, fused, forward / fused])
    step_columns = ["rows", "precision", "forward pass (ms)", "fused step (ms)", "forward / fused", "aten operators, forward / fused"]
    prefill_columns = ["prompts", "tokens", "forward (ms)", "fused (ms)", "forward / fused"]
    record.write_record(
        args, "decode_step", {"threads": args.threads, "model": path, "steps": [dict(zip(step_columns, row)) for row in steps],
                              "prefill": [dict(zip(prefill_columns, row)) for row in prefills]},
        tables=[{"title": f"Decode step, {PROMPT_TOKENS}-token cached prompt, {args.threads} threads, median of {args.steps} steps:",
                 "columns": step_columns, "rows": steps},
                {"title": f"Prefill, bf16 weights, median of {args.prefills} calls:", "columns": prefill_columns, "rows": prefills}],
        headline={"name": "forward / fused, 16 rows, bf16 weights", "value": next(r[4] for r in steps if r[0] == 16 and r[1] == "bf16 weights")},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
