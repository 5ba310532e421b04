"""Decode-step benchmark: what one SmolLM2 decode step costs by rows and precision, and how many operators it runs.

Both rollouts (TRL's ``model.generate`` and ours) and both serving policies run one forward pass per
generated token, so the cost of one step with few rows bounds how much faster any batching policy can
be. For 1, 8 and 16 rows (each with a 200-token cached prompt), in one process: float32, bf16 autocast
over float32 weights (the trainer's bf16 on a CPU), and bf16 weights; the median of ``--steps`` steps
after 5 warm-up steps, the aten operators one step dispatches (torch.profiler), and, for scale, one
8 x 576 x 576 matmul and one tiny add.

    .venv/bin/python bench/decode_step.py [--threads 2] [--steps 30] [--model DIR]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT_TOKENS = 200


def step_costs(model, rows: int, autocast: bool, steps: int) -> tuple[float, int]:
    """(median ms per decode step, aten operators per step) for ``rows`` rows over a cached prompt."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(100, 1000, (rows, PROMPT_TOKENS))
    precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with torch.no_grad(), precision:
        cache = model(input_ids=ids, use_cache=True).past_key_values
        mask = torch.ones(rows, PROMPT_TOKENS, dtype=torch.long)
        positions = torch.full((rows, 1), PROMPT_TOKENS)
        tokens = ids[:, -1:]

        def step():
            nonlocal mask, positions
            mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=1)
            model(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
            positions = positions + 1

        for _ in range(5):
            step()
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        with profile(activities=[ProfilerActivity.CPU]) as trace:
            step()
    return 1000 * statistics.median(times), sum(event.count for event in trace.key_averages())


def per_call_us(function, calls: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return 1e6 * (time.perf_counter() - start) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--steps", type=int, default=30, help="measured decode steps per setting.")
    parser.add_argument("--model", default=None, help="model folder (default: SmolLM2-135M-Instruct, built into the cache).")
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from medssr.models import build_smollm2

    torch.set_num_threads(args.threads)
    float32 = AutoModelForCausalLM.from_pretrained(args.model or str(build_smollm2()), dtype=torch.float32).eval()
    bfloat16 = copy.deepcopy(float32).to(torch.bfloat16)
    settings = (("float32", float32, False), ("bf16 autocast", float32, True), ("bf16 weights", bfloat16, False))
    print(f"SmolLM2 decode step, {PROMPT_TOKENS}-token cached prompt, {args.threads} torch threads, median of {args.steps} steps")
    print(f"{'rows':>4}  {'precision':14s} {'ms/step':>8} {'ms/row':>7} {'aten ops':>9}")
    for rows in (1, 8, 16):
        for name, model, autocast in settings:
            ms, ops = step_costs(model, rows, autocast, args.steps)
            print(f"{rows:>4}  {name:14s} {ms:8.1f} {ms / rows:7.2f} {ops:9d}", flush=True)
    x, w = torch.randn(8, 576), torch.randn(576, 576)
    print(f"one 8 x 576 x 576 matmul: {per_call_us(lambda: torch.mm(x, w)):.1f} us; one tiny add: {per_call_us(lambda: x.add(1.0)):.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
