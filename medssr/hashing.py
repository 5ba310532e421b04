"""Content hashes: of a config (its identity), of a file or folder's bytes, of a folder's listing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def config_dict(config: Any) -> dict[str, Any]:
    """A config (dataclass, pydantic model or mapping) as plain JSON-able data."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        data = dataclasses.asdict(config)
    elif hasattr(config, "model_dump"):
        data = config.model_dump(mode="json")
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise TypeError(f"cannot read a config of type {type(config).__name__}")
    return json.loads(json.dumps(data, default=str, sort_keys=True))


def config_hash(config: Any) -> str:
    """sha256 of the canonical JSON of the fully resolved config."""
    canonical = json.dumps(config_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """Content hash of a file, or of every file in a folder (relative names included)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def folder_fingerprint(path: str | os.PathLike) -> str:
    """sha256 over a folder's relative file names, sizes and modification times: tells a rewritten model folder
    from the one registered before without reading gigabytes of weights."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        info = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()
