#!/usr/bin/env python3
"""Recompute a published study's paired deltas from its raw files and check them against its report's.

    python scripts/recompute_study.py docs/results/study-smollm2/raw

Reads only the folder (per-question files, the study's settings, the published headline numbers), prints the
headline comparison and every number that does not reproduce; exit status 1 when any does not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's medssr, also without an install

from medssr.study.publish import differences, recompute  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="docs/results/study-smollm2/raw", help="A study report's raw/ folder.")
    folder = Path(parser.parse_args(argv).folder)
    if not (folder / "study.json").is_file():
        print(f"{folder}: no study.json; a published study's raw/ folder has one", file=sys.stderr)
        return 2
    numbers = recompute(folder)
    key = "medssr_vs_rl-real.raredis_heldout.with_recovery"
    if f"{key}.delta" in numbers:
        delta, low, high, mde = (100 * numbers[f"{key}.{part}"] for part in ("delta", "ci_low", "ci_high", "mde"))
        print(f"medssr minus rl-real, raredis_heldout, reference protocol: {delta:+.1f} [{low:+.1f}, {high:+.1f}] points, MDE {mde:.1f}")
    wrong = differences(folder)
    for line in wrong:
        print(f"not reproduced: {line}")
    print(f"{len(numbers) - len(wrong)} of {len(numbers)} published numbers reproduced from {folder}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
