"""The folders from outside the repository are settings: env var, else pyproject.toml, else a clear error."""

from __future__ import annotations

import pytest

from medssr import locations
from medssr.errors import UserError


def test_the_env_var_wins_then_pyproject_then_a_clear_error(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    (checkout / "bench-files").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.delenv(locations.BENCHMARKS.env, raising=False)
    with pytest.raises(UserError, match="is not set: set MEDSSR_BENCHMARKS_DIR="):
        locations.folder(locations.BENCHMARKS, checkout=checkout)
    assert locations.folder(locations.BENCHMARKS, required=False, checkout=checkout) is None

    (checkout / "pyproject.toml").write_text('[tool.medssr]\nbenchmarks_dir = "bench-files"\n')
    assert locations.folder(locations.BENCHMARKS, checkout=checkout) == checkout / "bench-files"

    monkeypatch.setenv(locations.BENCHMARKS.env, str(tmp_path / "elsewhere"))
    assert locations.folder(locations.BENCHMARKS, checkout=checkout) == tmp_path / "elsewhere"

    monkeypatch.setenv(locations.BENCHMARKS.env, str(tmp_path / "gone"))
    with pytest.raises(UserError, match=r"gone \(from MEDSSR_BENCHMARKS_DIR\) does not exist"):
        locations.folder(locations.BENCHMARKS, checkout=checkout)


def test_a_local_run_without_benchmarks_says_which_setting_is_missing(tmp_path, monkeypatch):
    from medssr.split import SplitConfig, split_stage2_data

    with pytest.raises(UserError, match="MEDSSR_BENCHMARKS_DIR"):
        split_stage2_data(SplitConfig(benchmarks_dir=""), tmp_path / "out")
    with pytest.raises(UserError, match="no such folder"):
        split_stage2_data(SplitConfig(benchmarks_dir=str(tmp_path / "missing")), tmp_path / "out")
