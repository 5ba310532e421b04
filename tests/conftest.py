"""Shared fixtures. Every module in tests/plugins/ is loaded as a plugin (server fixtures live there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = sorted(
    f"tests.plugins.{path.stem}" for path in (Path(__file__).parent / "plugins").glob("*.py") if path.stem != "__init__"
)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model folder with a locally trained ChatML tokenizer (built once per session)."""
    from medssr.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))
