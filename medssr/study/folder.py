"""The study folder: one subfolder per step, each finished when its ``done.json`` marker exists.

Markers are written atomically as a step's last act, with every path inside the folder written relative to
it, so a study folder can be moved or copied to another machine and resumed there.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from medssr.storage import atomic_writer
from medssr.study.config import StudyConfig

log = logging.getLogger(__name__)

DONE = "done.json"
IN_STUDY = "<study>/"
"""How a marker writes a path inside the study folder, so the folder can be moved or copied to another machine."""
STUDY_FILE = "study.json"
PARTS_FILE = "parts.json"


class Study:
    """The study folder: its steps, their markers, and the shared inputs every arm uses."""

    def __init__(self, config: StudyConfig):
        self.config = config
        self.root = Path(config.out_dir).resolve()
        self.study_id = f"study-{config.identity_hash()[:12]}"

    def claim(self) -> None:
        """Record the study's identity, or refuse a folder that holds another study."""
        path = self.root / STUDY_FILE
        identity = self.config.identity()
        if path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))["identity"]
            changed = sorted(key for key in set(stored) | set(identity) if stored.get(key) != identity.get(key))
            if changed:
                raise ValueError(
                    f"{self.root} holds a study with other settings ({', '.join(f'{k}: {stored.get(k)!r} there' for k in changed)}); "
                    "give another out_dir or the same settings"
                )
            return
        write_json(path, {"study_id": self.study_id, "identity": identity, "identity_sha256": self.config.identity_hash()})

    def parts(self) -> list[dict]:
        """Every invocation of the study so far: its command line (as the CLI quoted it), arms and start time."""
        path = self.root / PARTS_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def record_part(self) -> None:
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        part = {"command": self.config.command, "arms": self.config.selected_arms(), "started_at": started}
        write_json(self.root / PARTS_FILE, self.parts() + [part])

    def folder(self, step: str) -> Path:
        return self.root / step

    def finished(self, step: str) -> dict | None:
        marker = self.folder(step) / DONE
        return self.read_marker(marker) if marker.is_file() else None

    def read_marker(self, marker: Path) -> dict:
        """A step's done.json, its paths resolved against where the study folder is now."""
        return self._local(json.loads(marker.read_text(encoding="utf-8")))

    def step(self, step: str, compute: Callable[[Path], dict]) -> dict:
        """``compute(folder)``'s result, computed once: a finished step is read back from its marker."""
        done = self.finished(step)
        if done is not None:
            return done
        folder = self.folder(step)
        folder.mkdir(parents=True, exist_ok=True)
        log.info("study %s: %s", self.study_id, step)
        started = time.perf_counter()
        result = compute(folder)
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(folder / DONE, self._portable(result))
        return result

    def _portable(self, value):
        """``value`` with every path under the study folder written relative to it (IN_STUDY...)."""
        if isinstance(value, dict):
            return {key: self._portable(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._portable(item) for item in value]
        if isinstance(value, (str, Path)) and Path(value).is_absolute() and Path(value).is_relative_to(self.root):
            return IN_STUDY + Path(value).relative_to(self.root).as_posix()
        return value

    def _local(self, value):
        """The inverse of _portable, against where the study folder is now."""
        if isinstance(value, dict):
            return {key: self._local(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self._local(item) for item in value]
        if isinstance(value, str) and value.startswith(IN_STUDY):
            return str(self.root / value[len(IN_STUDY):])
        return value


def write_json(path: Path, data: dict) -> None:
    with atomic_writer(path) as handle:
        handle.write(json.dumps(data, indent=2, default=str) + "\n")
