"""Where the data that lives outside the repository is: the benchmark files and the operators' CRDs.

Each location is a setting: its environment variable, else the ``[tool.medssr]`` table of pyproject.toml in a
source checkout (a path relative to the checkout). A location that is needed and missing is a UserError that
names the setting and how to set it, never a guess at a folder.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from medssr.errors import UserError

CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Location:
    key: str
    """The key in pyproject.toml's [tool.medssr]."""
    env: str
    what: str


BENCHMARKS = Location("benchmarks_dir", "MEDSSR_BENCHMARKS_DIR", "benchmark files in the MedSSR reference format (test_short_*.json)")
CRDS = Location("crds_dir", "MEDSSR_CRDS_DIR", "the operators' CRDs as YAML (training-operator, Trainer, KServe)")


def _configured(location: Location, checkout: Path) -> tuple[Path | None, str]:
    """The configured folder (None when unset) and where the setting came from."""
    if os.environ.get(location.env):
        return Path(os.environ[location.env]).expanduser(), location.env
    pyproject = checkout / "pyproject.toml"
    if pyproject.is_file():
        value = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("medssr", {}).get(location.key)
        if value:
            return (checkout / value).resolve(), f"{location.key} in {pyproject}'s [tool.medssr]"
    return None, ""


def folder(location: Location, required: bool = True, checkout: Path = CHECKOUT) -> Path | None:
    """The folder of ``location``; with ``required``, a UserError when it is unset or does not exist, else None."""
    path, source = _configured(location, checkout)
    if path is not None and path.is_dir():
        return path
    if not required:
        return None
    raise UserError(missing(location, path, source))


def missing(location: Location, path: Path | None = None, source: str = "") -> str:
    """Why ``location`` cannot be used, and how to set it."""
    where = f"{path} (from {source}) does not exist" if path is not None else "is not set"
    return f"the folder of {location.what} {where}: set {location.env}=/path/to/it"


def benchmarks_dir(required: bool = True) -> Path | None:
    return folder(BENCHMARKS, required)


def crds_dir(required: bool = True) -> Path | None:
    return folder(CRDS, required)
