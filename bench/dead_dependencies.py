"""Time from "dead" to the one-line report, per dependency, with the default retry and timeout settings.

For each of MLflow, S3, the Kubernetes API, the KFP host and an OpenAI-compatible endpoint, two kinds of dead:
stopped (a port nothing listens on: connection refused) and hung (a port that accepts connections and never
answers). Each case runs in its own process, the way a user meets it: MLflow through ``medssr promote --dry-run``,
Kubernetes through ``medssr status``, KFP through ``medssr pipeline submit``, S3 and the OpenAI endpoint through
the library calls the stages make (``storage.read_text``, the openai generator). Prints a table: seconds until
the process ended (Python start-up and imports included), the wait the report itself states ("gave up after"),
how many "waiting for ..." progress lines it printed, and the report's last line.

    .venv/bin/python bench/dead_dependencies.py [--only mlflow,s3,kubernetes,kfp,openai] [--kinds stopped,hung]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import record

MEDSSR = str(Path(sys.executable).with_name("medssr"))


def kubeconfig_for(server: str, folder: Path) -> Path:
    """A kubeconfig whose only context is the (dead) API server at ``server``, with a dummy token."""
    path = folder / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
        "users": [{"name": "u", "user": {"token": "not-a-secret"}}],
    }))
    return path

S3_CALL = "from medssr import storage; storage.read_text('s3://bucket/key')"
OPENAI_CALL = (
    "import sys; from medssr.generation import GeneratorConfig, build_generator; "
    "build_generator(GeneratorConfig(backend='openai', model='m', base_url=sys.argv[1], progress=False)).generate(['x'])"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def dead_port(kind: str):
    """A port nothing listens on (stopped), or one that accepts connections and never answers (hung)."""
    if kind == "stopped":
        yield free_port()
        return
    with socket.create_server(("127.0.0.1", 0), backlog=64) as server:
        yield server.getsockname()[1]


def command_for(dependency: str, port: int, folder: Path) -> tuple[list[str], dict[str, str]]:
    url = f"http://127.0.0.1:{port}"
    if dependency == "mlflow":
        return [MEDSSR, "promote", "medssr", "--dry-run", "--tracking-uri", url], {}
    if dependency == "s3":
        keys = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
        return [sys.executable, "-c", S3_CALL], {**keys, "AWS_ENDPOINT_URL": url}
    if dependency == "kubernetes":
        return [MEDSSR, "status", "run-x", "--kubeconfig", str(kubeconfig_for(f"https://127.0.0.1:{port}", folder))], {}
    if dependency == "kfp":
        return [MEDSSR, "pipeline", "submit", "--host", url, "--param", "run_id=dead-host"], {}
    if dependency == "openai":
        return [sys.executable, "-c", OPENAI_CALL, f"{url}/v1"], {}
    raise ValueError(dependency)


def measure(dependency: str, kind: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="medssr-bench-dead-") as tmp, dead_port(kind) as port:
        command, env = command_for(dependency, port, Path(tmp))
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
        seconds = time.monotonic() - started
    lines = result.stderr.strip().splitlines()
    return {
        "dependency": dependency, "kind": kind, "seconds": seconds, "exit": result.returncode,
        "progress_lines": sum(line.startswith("waiting for ") for line in lines),
        "waited": float(found.group(1)) if (found := re.search(r"gave up after ([\d.]+) s", result.stderr)) else None,
        "report": lines[-1] if lines else "",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="mlflow,s3,kubernetes,kfp,openai")
    parser.add_argument("--kinds", default="stopped,hung")
    record.add_arguments(parser)
    args = parser.parse_args()
    rows = []
    for dependency in args.only.split(","):
        for kind in args.kinds.split(","):
            row = measure(dependency, kind)
            rows.append(row)
            print(f"{dependency:10} {kind:7} {row['seconds']:6.1f} s (waited {row['waited']} s)  exit {row['exit']}  "
                  f"{row['progress_lines']} progress lines  {row['report'][:240]}", flush=True)
    print("\n| dependency | dead | process seconds to the report | waited (the report's own figure) | progress lines | exit |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        waited = "-" if row["waited"] is None else f"{row['waited']:.1f}"
        print(f"| {row['dependency']} | {row['kind']} | {row['seconds']:.1f} | {waited} | {row['progress_lines']} | {row['exit']} |")
    columns = ["dependency", "dead", "process seconds to the report", "waited (s, the report's own figure)", "progress lines", "exit"]
    table = [[r["dependency"], r["kind"], r["seconds"], "-" if r["waited"] is None else r["waited"], r["progress_lines"], r["exit"]] for r in rows]
    record.write_record(args, "dead_dependencies", {"cases": rows}, tables=[{"title": "", "columns": columns, "rows": table}],
                        headline={"name": "slowest report of a dead dependency (s)", "value": max(r["seconds"] for r in rows), "target": "<= 60"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
