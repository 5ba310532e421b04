"""A bench run as data: one JSON record in docs/results/bench/ per run.

A record holds what is needed to compare runs later: the command, the commit (and whether the tree had
uncommitted changes), the date, the machine (CPU model, cores, the instruction-set flags that decide
which kernels run), the bench's own figures, and optionally tables to show and a headline figure to
follow over time. ``scripts/render_benchmarks.py`` renders every record into docs/benchmarks.md.

Every bench calls :func:`add_arguments` on its parser and :func:`write_record` at its end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "results" / "bench"
# The flags that decide which CPU kernels torch and oneDNN pick (bf16 and AMX paths above all).
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--record-dir", type=Path, default=RESULTS_DIR,
                        help="Where this run's JSON record goes (rendered into docs/benchmarks.md).")
    parser.add_argument("--no-record", action="store_true", help="Write no record (a trial run).")


def machine() -> dict[str, Any]:
    """The CPU model, usable cores, instruction-set flags and memory of this machine."""
    cpu, flags, memory_gib = "", set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu:
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass  # not Linux: the model name from platform, no flags
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": cores, "flags": [f for f in CPU_FLAGS if f in flags], "memory_gib": memory_gib,
            "python": platform.python_version()}


def commit() -> tuple[str, bool]:
    """The checked-out commit (short) and whether tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.strip()

    try:
        return git("rev-parse", "--short", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return "unknown", True


def write_record(args: argparse.Namespace, bench: str, figures: dict[str, Any], *, tables: list[dict] | None = None,
                 headline: dict[str, Any] | None = None, note: str = "") -> Path | None:
    """Write this run's record; returns its path (None with --no-record).

    ``tables``: ``[{"title": ..., "columns": [...], "rows": [[...], ...]}]``, what docs/benchmarks.md shows
    (without them it shows the figures flattened). ``headline``: ``{"name": ..., "value": float, "target":
    "<= 0.5"}``, the one figure whose trend over runs is plotted.
    """
    if args.no_record:
        return None
    sha, dirty = commit()
    now = datetime.now(timezone.utc).replace(microsecond=0)
    record = {
        "bench": bench,
        "command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "commit": sha, "dirty": dirty, "date": now.isoformat(), "historical": False,
        "machine": machine(), "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "note": note, "figures": figures, "tables": tables or [], "headline": headline,
    }
    args.record_dir.mkdir(parents=True, exist_ok=True)
    path = args.record_dir / f"{bench}-{now:%Y%m%dT%H%M%SZ}-{sha}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=2, default=float) + "\n", encoding="utf-8")
    temporary.replace(path)  # atomic: a killed bench leaves no half record
    print(f"record: {os.path.relpath(path, Path.cwd())} (run `make benchmarks-doc` to render docs/benchmarks.md)")
    return path
