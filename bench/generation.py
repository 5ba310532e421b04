"""Throughput of the batched transformers backend against a one-prompt-one-sample loop, same run.

On SmolLM2-135M-Instruct: 16 chat prompts (the paper's prompt on short medical questions) x 8 samples x
exactly 32 new tokens (EOS is suppressed until then, so both sides generate the same token count).
The batched side is one ``generate(prompts, n=8)`` call; the loop calls ``generate([prompt], n=1)``
once per prompt and sample (``--loop-samples`` per prompt, default 1: the loop's rate in tokens/s
does not depend on how often it repeats, and 128 serial runs take many minutes on 2 cores).

Memory-bandwidth bound: each decode step reads every weight once, so weight bytes x decode steps /
elapsed is the weight traffic achieved; it is compared with a memcpy bandwidth measured here (a large
tensor copy, counting read + write traffic). Elapsed includes prefill, so the fraction is a lower bound.

The peer: vLLM's CPU build (``make vllm``) on the same prompts, samples, sampling and exactly as many new
tokens (its ``min_tokens``), beside our batched side in each of ``--vllm-dtypes``, alternating which goes
first over ``--vllm-rounds`` rounds (medians); its engine start is timed apart. In each dtype both sides
also decode the prompts greedily, and the share of identical completions is reported. ``--vllm-dtypes ''``
leaves the peer out.

    .venv/bin/python bench/generation.py [--model DIR] [--batch-size 128] [--vllm-dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import record


def memcpy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Best read+write traffic of a large tensor copy, bytes/s."""
    import torch

    numel = megabytes * 2**20 // 4
    src = torch.ones(numel, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages once
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * numel * 4 / best


def questions(count: int):
    from medssr.commands.demo import EXAMPLES
    from medssr.data import MCQItem

    topics = ["seizures and ataxia", "recurrent fractures and blue sclerae", "hepatosplenomegaly and bone pain",
              "progressive muscle weakness", "lens dislocation and tall stature", "early-onset cataracts"]
    items = list(EXAMPLES)
    while len(items) < count:
        index = len(items)
        items.append(MCQItem(
            id=f"bench-{index}",
            stem=f"A {index + 2}-year-old child presents with {topics[index % len(topics)]}. Which finding is most likely?",
            options={"A": "Finding one", "B": "Finding two", "C": "Finding three", "D": "Finding four"},
        ))
    return items[:count]


def vllm_peer(model: str, prompts: list, args) -> dict:
    """Our batched side and vLLM's CPU build in each dtype: tokens/s (median over alternating rounds), vLLM's
    engine start, and the share of greedy completions (and tokens before the first difference) that agree."""
    import vllm

    from medssr.generation import GeneratorConfig, SamplingParams, build_generator
    from medssr.generation.vllm_backend import VLLMGenerator

    sampling = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, max_tokens=args.new_tokens, seed=0)
    exact = vllm.SamplingParams(n=args.samples, temperature=0.6, top_p=0.95, top_k=20, max_tokens=args.new_tokens, min_tokens=args.new_tokens)
    greedy = SamplingParams(temperature=0.0, max_tokens=args.new_tokens)
    rows = len(prompts) * args.samples
    results = {}
    for dtype in [d for d in args.vllm_dtypes.split(",") if d]:
        ours = build_generator(GeneratorConfig(model=model, dtype=dtype, batch_size=args.batch_size, progress=False))
        started = time.perf_counter()
        # On a GPU our side's model is already there: vLLM takes half the memory (on a CPU the cache size decides).
        engine = VLLMGenerator(GeneratorConfig(backend="vllm", model=model, dtype=dtype, kv_cache_gib=args.vllm_kv_cache_gib,
                                               gpu_memory_utilization=0.5, progress=False))
        load_s = time.perf_counter() - started
        requests = [{"prompt_token_ids": engine._encode(prompt)} for prompt in prompts]
        ours.generate(prompts[:1], n=1, sampling=SamplingParams(max_tokens=2), min_new_tokens=2)  # warm-up, both sides
        engine.llm.generate(requests[:1], vllm.SamplingParams(max_tokens=2), use_tqdm=False)
        seconds: dict[str, list[float]] = {"medssr": [], "vllm": []}
        for round_index in range(args.vllm_rounds):
            for side in ("medssr", "vllm") if round_index % 2 == 0 else ("vllm", "medssr"):
                start = time.perf_counter()
                if side == "medssr":
                    out = ours.generate(prompts, n=args.samples, sampling=sampling, min_new_tokens=args.new_tokens)
                    assert sum(len(samples) for samples in out) == rows
                else:
                    out = engine.llm.generate(requests, exact, use_tqdm=False)
                    assert all(len(sample.token_ids) == args.new_tokens for request in out for sample in request.outputs)
                seconds[side].append(time.perf_counter() - start)
        rates = {side: rows * args.new_tokens / statistics.median(times) for side, times in seconds.items()}
        mine, theirs = ([out[0] for out in side.generate(prompts, n=1, sampling=greedy)] for side in (ours, engine))
        tokenized = [(engine.tokenizer.encode(a, add_special_tokens=False), engine.tokenizer.encode(b, add_special_tokens=False))
                     for a, b in zip(mine, theirs)]
        same = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in tokenized)
        results[dtype] = {
            "tokens_per_s": rates, "seconds": seconds, "vllm_engine_start_s": load_s,
            "medssr_over_vllm": rates["medssr"] / rates["vllm"],
            "greedy_identical_completions": sum(a == b for a, b in zip(mine, theirs)) / len(prompts),
            "greedy_tokens_before_first_difference": same / max(1, sum(max(len(a), len(b)) for a, b in tokenized)),
        }
        engine.close()
        del ours
        r = results[dtype]
        print(f"{dtype}: medssr batched {rates['medssr']:.1f} tokens/s, vLLM CPU {rates['vllm']:.1f} tokens/s -> ours / vLLM "
              f"{r['medssr_over_vllm']:.2f}x (medians of {args.vllm_rounds}); vLLM engine start {load_s:.1f} s (not counted); "
              f"greedy: {r['greedy_identical_completions']:.0%} of completions identical, "
              f"{r['greedy_tokens_before_first_difference']:.1%} of tokens before the first difference", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="", help="Model folder (default: build/cached SmolLM2-135M-Instruct).")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128, help="Rows per forward batch on the batched side.")
    parser.add_argument("--loop-samples", type=int, default=1, help="Serial runs per prompt on the loop side.")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--vllm-dtypes", default="float32,bfloat16", help="dtypes of the vLLM CPU peer and our side beside it; '' for none.")
    parser.add_argument("--vllm-rounds", type=int, default=2, help="Alternating rounds of ours and vLLM's per dtype.")
    parser.add_argument("--vllm-kv-cache-gib", type=float, default=2.0, help="vLLM's key/value cache (its CPU build reserves RAM).")
    record.add_arguments(parser)
    args = parser.parse_args()

    import torch

    from medssr.generation import GeneratorConfig, SamplingParams, build_generator
    from medssr.models import build_smollm2
    from medssr.prompts import build_messages

    torch.set_num_threads(args.threads)
    model = args.model or str(build_smollm2())
    generator = build_generator(GeneratorConfig(model=model, batch_size=args.batch_size, progress=False))
    weight_bytes = sum(p.numel() * p.element_size() for p in generator.model.parameters())  # tied weights once
    prompts = [build_messages(item) for item in questions(args.prompts)]
    prompt_tokens = [len(generator._encode(prompt)) for prompt in prompts]
    sampling = SamplingParams(temperature=0.6, top_p=0.95, top_k=20, max_tokens=args.new_tokens, seed=0)
    bandwidth = memcpy_bandwidth()
    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")
    print(f"model: {model} ({weight_bytes / 1e6:.0f} MB of weights, {generator.model.dtype})")
    print(f"prompts: {args.prompts} chat prompts of {min(prompt_tokens)}-{max(prompt_tokens)} tokens; {args.new_tokens} new tokens each")
    print(f"memcpy bandwidth: {bandwidth / 1e9:.1f} GB/s (read + write)")

    generator.generate(prompts[:1], n=1, sampling=SamplingParams(max_tokens=2), min_new_tokens=2)  # warm-up

    start = time.perf_counter()
    batched = generator.generate(prompts, n=args.samples, sampling=sampling, min_new_tokens=args.new_tokens)
    batched_s = time.perf_counter() - start
    rows = args.prompts * args.samples
    assert sum(len(samples) for samples in batched) == rows
    batched_tokens = rows * args.new_tokens
    batched_steps = args.new_tokens * -(-rows // args.batch_size)

    generator.config.batch_size = 1
    start = time.perf_counter()
    for prompt in prompts:
        for _ in range(args.loop_samples):
            generator.generate([prompt], n=1, sampling=sampling, min_new_tokens=args.new_tokens)
    loop_s = time.perf_counter() - start
    runs = args.prompts * args.loop_samples
    loop_tokens = runs * args.new_tokens
    loop_steps = runs * args.new_tokens

    def report(name: str, tokens: int, seconds: float, steps: int) -> float:
        rate = tokens / seconds
        traffic = weight_bytes * steps / seconds
        print(f"{name}: {tokens} tokens in {seconds:.1f} s = {rate:.1f} tokens/s; "
              f"{steps} decode steps x {weight_bytes / 1e6:.0f} MB = {traffic / 1e9:.2f} GB/s = "
              f"{100 * traffic / bandwidth:.1f}% of memcpy bandwidth")
        return rate

    batched_rate = report(f"batched ({args.prompts} prompts x n={args.samples}, batch {args.batch_size})", batched_tokens, batched_s, batched_steps)
    loop_rate = report(f"loop ({runs} runs of 1 prompt x 1 sample)", loop_tokens, loop_s, loop_steps)
    print(f"speed-up batched / loop: {batched_rate / loop_rate:.1f}x (target >= 4x)")
    del generator
    peer = vllm_peer(model, prompts, args) if args.vllm_dtypes else {}
    figures = {"model": model, "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens, "batch_size": args.batch_size,
               "tokens_per_s": {"batched": batched_rate, "loop": loop_rate}, "seconds": {"batched": batched_s, "loop": loop_s},
               "memcpy_gb_per_s": bandwidth / 1e9, "vllm_cpu": peer}
    tables = [{"title": f"{args.prompts} prompts x {args.samples} samples x {args.new_tokens} new tokens:",
               "columns": ["side", "tokens/s", "seconds"],
               "rows": [["batched", batched_rate, batched_s], ["loop, 1 prompt x 1 sample", loop_rate, loop_s]]}]
    if peer:
        tables.append({"title": f"the same workload beside vLLM's CPU build (medians of {args.vllm_rounds} alternating rounds; "
                                "its engine start not counted):",
                       "columns": ["dtype", "medssr tokens/s", "vLLM tokens/s", "medssr / vLLM", "vLLM start (s)", "greedy identical"],
                       "rows": [[dtype, r["tokens_per_s"]["medssr"], r["tokens_per_s"]["vllm"], r["medssr_over_vllm"], r["vllm_engine_start_s"],
                                 r["greedy_identical_completions"]] for dtype, r in peer.items()]})
    record.write_record(args, "generation", figures, tables=tables,
                        headline={"name": "tokens/s, batched / loop", "value": batched_rate / loop_rate, "target": ">= 4"})


if __name__ == "__main__":
    main()
