"""Pipeline benchmark: wall time of a local kfp.local run, per-stage compute, and orchestration overhead.

Runs ``medssr pipeline run --local --preset PRESET`` (the real CLI, in a subprocess) ``--runs`` times in
one working folder (local sqlite MLflow store under it) and prints the run's timing report: pipeline
wall time, each stage's compute (from its nested MLflow run: ``compute_seconds``, time inside the
stage function; ``stage_seconds`` for the registry steps), and the overhead = wall - stage work, split
into MLflow tracking inside the steps and orchestration proper (a Python process per step, the KFP
executor, kfp.local's bookkeeping). The first run
also pays one-off costs (MLflow schema migration of a fresh store, knowledge-base parse, model build);
later runs show the steady state. Target for the tiny preset: <= 15 %.

    .venv/bin/python bench/pipeline.py [--preset tiny] [--runs 2] [--workdir .medssr/bench-pipeline]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import record

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "smol"])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workdir", default=str(REPO / ".medssr" / "bench-pipeline"))
    record.add_arguments(parser)
    args = parser.parse_args()

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the local default store under workdir
    runs = []
    for index in range(1, args.runs + 1):
        run_id = f"bench-{args.preset}-{int(time.time())}-{index}"
        command = [str(Path(sys.executable).with_name("medssr")), "pipeline", "run", "--local", "--preset", args.preset, "--param", f"run_id={run_id}"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
            return result.returncode
        report = result.stdout[result.stdout.index(f"pipeline {run_id} succeeded"):]
        print(f"--- run {index}/{args.runs} ({args.preset}); the command took {wall:.1f} s including interpreter start ---")
        print(report.strip(), flush=True)
        shares = {name: float(value) for name, value in re.findall(
            r"^\s*(overhead|of which MLflow tracking|of which orchestration)[^=]*= ([\d.]+)%", report, flags=re.M)}
        wall_time = re.search(r"pipeline wall time: ([\d.]+) s", report)
        runs.append({"command_seconds": wall, "wall_s": float(wall_time.group(1)) if wall_time else None,
                     "overhead_pct": shares.get("overhead"), "mlflow_pct": shares.get("of which MLflow tracking"),
                     "orchestration_pct": shares.get("of which orchestration"), "report": report.strip().splitlines()})
    last = runs[-1]  # the steady state: the first run also pays one-off costs
    record.write_record(
        args, "pipeline", {"preset": args.preset, "runs": runs},
        tables=[{"title": f"{args.preset} preset, run by run (target: overhead <= 15 %):",
                 "columns": ["run", "wall (s)", "overhead (%)", "MLflow inside the steps (%)", "orchestration (%)"],
                 "rows": [[i + 1, r["wall_s"], r["overhead_pct"], r["mlflow_pct"], r["orchestration_pct"]] for i, r in enumerate(runs)]}],
        headline=last["overhead_pct"] is not None and {"name": "overhead share of wall time (%)", "value": last["overhead_pct"], "target": "<= 15"} or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
