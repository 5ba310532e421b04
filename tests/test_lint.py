"""The code names only what exists and imports only what it uses (pyflakes' checks, through ruff).

A misspelt or unimported name in a path the tests reach late (a decode thread's cancel branch) fails
there as a NameError, far from its cause; this finds every one at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_undefined_or_unused_names():
    ruff = Path(sys.executable).with_name("ruff")
    run = subprocess.run([str(ruff), "check", "--select", "F", "--no-cache", "--output-format", "concise", str(ROOT)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_lines_fit_the_configured_length():
    """pyproject.toml's [tool.ruff] line-length is what the code holds to, not a number nobody checks."""
    ruff = Path(sys.executable).with_name("ruff")
    run = subprocess.run([str(ruff), "check", "--select", "E501", "--no-cache", "--output-format", "concise", str(ROOT)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
