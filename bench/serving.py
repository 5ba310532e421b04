"""Serving benchmark on SmolLM2-135M-Instruct: dynamic batching against batch size 1, then overload.

1. Throughput and latency with 16 concurrent clients (closed loop, real MedMCQA questions, fixed
   32-token completions) against a server with dynamic batching (max_batch_size 16) and against one
   with max_batch_size 1, in the same run.
2. 64 concurrent clients for 60 s against the batching server with a bounded queue: counts of 5xx
   (must be 0) and of 429/503 refusals (clients wait Retry-After, then go on), and the server's RSS
   sampled every second (memory must stay bounded).

    .venv/bin/python bench/serving.py [--duration 90] [--overload-duration 60] [--json out.json]

Throughput counts completions that finished inside the measuring window; requests still running at
the end are cancelled (and reported), so a slow configuration is not flattered by a long drain.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MEDMCQA = Path(__file__).resolve().parents[2] / "shared" / "benchmarks" / "medssr-eval" / "test_short_medmcqa.json"
SERVED_NAME = "smollm2"


@dataclass
class Outcome:
    status: int
    latency_s: float
    tokens: int = 0
    finished_at: float = 0.0
    server_cpu_s: float = 0.0


@dataclass
class PhaseResult:
    label: str
    clients: int
    window_s: float
    outcomes: list[Outcome] = field(default_factory=list)
    cancelled: int = 0
    batches: float = 0.0
    batched_prompts: float = 0.0
    rss_mib: list[float] = field(default_factory=list)

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

    def _steady(self) -> tuple[list[Outcome], Outcome, Outcome]:
        served = sorted(self.served(), key=lambda o: o.finished_at)
        if len(served) < 2:
            return [], None, None
        # Completions that ended within a second of the first belong to the first batch: they mark the start.
        later = [o for o in served if o.finished_at > served[0].finished_at + 1.0]
        return later, served[0], served[-1]

    def steady_rate(self) -> tuple[float, float]:
        """(completions/s, tokens/s) from the first completion to the last. The window rate loses the batch
        still running at the end (up to 16 completions when batching, 1 without); this counts whole
        batches only, so it compares the two at steady state."""
        later, first, last = self._steady()
        if not later or last.finished_at <= first.finished_at:
            return float("nan"), float("nan")
        span = last.finished_at - first.finished_at
        return len(later) / span, sum(o.tokens for o in later) / span

    def completions_per_cpu_s(self) -> float:
        """Steady-state completions per second of server CPU time: what the model computes per unit of
        work, whatever share of a contended machine the server got meanwhile."""
        later, first, last = self._steady()
        if not later or last.server_cpu_s <= first.server_cpu_s:
            return float("nan")
        return len(later) / (last.server_cpu_s - first.server_cpu_s)

    def latency(self, quantile: float) -> float:
        values = sorted(o.latency_s for o in self.served())
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(quantile * len(values)))]

    @property
    def mean_batch(self) -> float:
        return self.batched_prompts / self.batches if self.batches else float("nan")

    def summary(self) -> dict:
        return {
            "label": self.label, "clients": self.clients, "window_s": self.window_s,
            "completions": len(self.served()), "completions_per_s": round(self.completions_per_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "steady_completions_per_s": round(self.steady_rate()[0], 3),
            "steady_tokens_per_s": round(self.steady_rate()[1], 2),
            "completions_per_server_cpu_s": round(self.completions_per_cpu_s(), 3), "p50_s": round(self.latency(0.5), 2),
            "p99_s": round(self.latency(0.99), 2), "mean_batch": round(self.mean_batch, 2),
            "status_200": self.count(200), "status_429_503": self.count(429, 503), "status_5xx": self.server_errors,
            "transport_errors": self.count(0), "cancelled_at_end": self.cancelled,
            "rss_mib": {"min": min(self.rss_mib), "max": max(self.rss_mib), "first": self.rss_mib[0],
                        "last": self.rss_mib[-1]} if self.rss_mib else None,
        }


def load_questions(limit_tokens: int, tokenizer_dir: Path) -> list[list[dict]]:
    """Real MedMCQA questions whose chat prompt is at most ``limit_tokens`` tokens (short prompts keep
    the benchmark about generation, not prefill)."""
    from transformers import AutoTokenizer

    from medssr.data import read_reference_benchmark

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    chats = []
    for item in read_reference_benchmark(MEDMCQA).records:
        messages = [{"role": "user", "content": item.render()}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if len(tokenizer.encode(text, add_special_tokens=False)) <= limit_tokens:
            chats.append(messages)
    return chats


def metric_total(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def run_phase(server, label: str, clients: int, window_s: float, questions: list, max_tokens: int,
                    sample_rss: bool = False) -> PhaseResult:
    import httpx

    result = PhaseResult(label=label, clients=clients, window_s=window_s)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    next_question = iter(range(10**9))
    async with httpx.AsyncClient(base_url=server.url, timeout=600, limits=limits) as client:
        before = (await client.get("/metrics")).text
        started = time.monotonic()
        deadline = started + window_s

        async def one_client():
            while time.monotonic() < deadline:
                body = {"model": SERVED_NAME, "messages": questions[next(next_question) % len(questions)],
                        "max_tokens": max_tokens, "min_tokens": max_tokens, "temperature": 0}
                sent = time.monotonic()
                try:
                    response = await client.post("/openai/v1/chat/completions", json=body)
                except httpx.TransportError:
                    result.outcomes.append(Outcome(0, time.monotonic() - sent))
                    continue
                done = time.monotonic()
                if done > deadline:
                    return  # finished after the window: not counted
                tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
                result.outcomes.append(Outcome(response.status_code, done - sent, tokens, done, server.cpu_seconds()))
                if response.status_code in (429, 503):
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

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
        # Cancelled clients disconnect; give the server a moment to drop their queued prompts.
        await asyncio.sleep(1.0)
        after = (await client.get("/metrics")).text
    for name, attribute in (("count", "batches"), ("sum", "batched_prompts")):
        metric = f"medssr_serving_batch_size_{name}"
        setattr(result, attribute, metric_total(after, metric) - metric_total(before, metric))
    return result


def warm_up(server, questions, max_tokens: int) -> None:
    import httpx

    body = {"model": SERVED_NAME, "messages": questions[0], "max_tokens": max_tokens, "temperature": 0}
    httpx.post(f"{server.url}/openai/v1/chat/completions", json=body, timeout=600).raise_for_status()


def describe(result: PhaseResult) -> str:
    steady_completions, steady_tokens = result.steady_rate()
    return (
        f"{result.label}: {result.clients} clients, {result.window_s:.0f} s: {len(result.served())} completions, "
        f"{result.completions_per_s:.3f} completions/s, {result.tokens_per_s:.1f} tokens/s "
        f"(steady state {steady_completions:.3f} completions/s, {steady_tokens:.1f} tokens/s, "
        f"{result.completions_per_cpu_s():.3f} completions per server CPU-second), "
        f"p50 {result.latency(0.5):.1f} s, p99 {result.latency(0.99):.1f} s, mean batch {result.mean_batch:.1f}, "
        f"5xx {result.server_errors}, 429/503 {result.count(429, 503)}, unfinished at end {result.cancelled}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=90.0, help="Measuring window per configuration (s).")
    parser.add_argument("--overload-duration", type=float, default=60.0, help="Overload window (s).")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32, help="Completion length, fixed (min_tokens too).")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=50.0,
                        help="How long a batch waits for more requests (gives answered clients time to return).")
    parser.add_argument("--max-queue", type=int, default=32, help="Waiting prompts before 429.")
    parser.add_argument("--prompt-tokens", type=int, default=80, help="Longest question prompt used (tokens).")
    parser.add_argument(
        "--torch-threads", type=int, default=1,
        help="torch threads in the server. 1 by default: on a shared, oversubscribed CPU, torch's spinning "
             "OpenMP threads made one 32-token completion take 70 s with 2 threads against 6 s with 1.",
    )
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()

    from medssr.models import build_smollm2
    from medssr.serving.config import ServeConfig
    from medssr.serving.process import ServerProcess, free_port

    model = build_smollm2()
    questions = load_questions(args.prompt_tokens, model)
    print(f"model {model}; {len(questions)} MedMCQA questions with prompts <= {args.prompt_tokens} tokens; "
          f"{args.max_tokens} tokens per completion; {os.cpu_count()} CPUs, {args.torch_threads} torch thread(s), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    logs = Path(tempfile.mkdtemp(prefix="medssr-bench-serving-"))

    def server_for(batch: int) -> ServerProcess:
        config = ServeConfig(
            model=str(model), name=SERVED_NAME, port=free_port(), max_batch_size=batch, max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue, max_tokens_limit=256, default_max_tokens=32, torch_threads=args.torch_threads,
        )
        return ServerProcess(config, logs / f"server-batch{batch}.log")

    results: dict[str, PhaseResult] = {}
    with server_for(args.max_batch_size) as server:
        warm_up(server, questions, args.max_tokens)
        results["batched"] = asyncio.run(run_phase(
            server, f"dynamic batching (max batch {args.max_batch_size})", args.clients, args.duration, questions,
            args.max_tokens))
        print(describe(results["batched"]), flush=True)
        results["overload"] = asyncio.run(run_phase(
            server, f"overload (max batch {args.max_batch_size}, queue {args.max_queue})", args.overload_clients,
            args.overload_duration, questions, args.max_tokens, sample_rss=True))
        print(describe(results["overload"]), flush=True)
        rss = results["overload"].rss_mib
        print(f"server RSS over {len(rss)} samples: min {min(rss):.0f} MiB, max {max(rss):.0f} MiB, "
              f"first {rss[0]:.0f} MiB, last {rss[-1]:.0f} MiB", flush=True)
        assert server.alive(), server.log_tail()
    with server_for(1) as server:
        warm_up(server, questions, args.max_tokens)
        results["batch1"] = asyncio.run(run_phase(
            server, "max batch 1", args.clients, args.duration, questions, args.max_tokens))
        print(describe(results["batch1"]), flush=True)

    batched, single = results["batched"], results["batch1"]
    speedup = batched.completions_per_s / max(single.completions_per_s, 1e-9)
    token_speedup = batched.tokens_per_s / max(single.tokens_per_s, 1e-9)
    steady_speedup = batched.steady_rate()[0] / max(single.steady_rate()[0], 1e-9)
    cpu_speedup = batched.completions_per_cpu_s() / max(single.completions_per_cpu_s(), 1e-9)
    print(f"speedup of dynamic batching over batch 1: {speedup:.2f}x completions/s, {token_speedup:.2f}x tokens/s "
          f"over the window; {steady_speedup:.2f}x completions/s at steady state; {cpu_speedup:.2f}x completions "
          f"per server CPU-second (target >= 3x)")
    five_xx = sum(r.server_errors for r in results.values())
    print(f"5xx over all phases: {five_xx}; overload refusals (429/503): {results['overload'].count(429, 503)}")
    if args.json:
        summary = {k: v.summary() for k, v in results.items()}
        summary |= {"speedup_window": speedup, "speedup_steady": steady_speedup, "speedup_per_cpu_s": cpu_speedup}
        args.json.write_text(json.dumps(summary, indent=2))
    return 1 if five_xx else 0


if __name__ == "__main__":
    sys.exit(main())
