"""Checkpoints that a restart can trust.

The Trainer writes ``checkpoint-N`` in place, so a process killed mid-save leaves a folder that looks
like a checkpoint but is not one. A checkpoint counts only once :class:`CompleteCheckpointCallback`
has written the marker file into it, after every rank finished writing and after the mirror copy
(local folder or s3://) is uploaded with its own marker last. Restarts pick the newest marked
checkpoint, here or in the mirror, and delete unmarked local ones.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from medssr import storage

log = logging.getLogger(__name__)

MARKER = "medssr-checkpoint-complete.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if storage.is_s3(base) else str(Path(base) / name)


def complete_checkpoints(base: str | Path) -> list[tuple[int, str]]:
    """(step, location) of every marked checkpoint under ``base`` (folder or s3://), oldest first."""
    found = []
    for name in storage.list_prefixes(str(base)):
        step = checkpoint_step(name)
        if step is not None and storage.exists(_join(_join(str(base), name), MARKER)):
            found.append((step, _join(str(base), name)))
    return sorted(found)


def remove_incomplete(local_dir: Path) -> list[str]:
    """Delete local ``checkpoint-N`` folders without a marker (half-written by a killed process) and
    leftover download staging folders."""
    removed = []
    if not local_dir.is_dir():
        return removed
    for path in sorted(local_dir.iterdir()):
        half_written = checkpoint_step(path.name) is not None and not (path / MARKER).is_file()
        if path.is_dir() and (half_written or path.name.startswith(".checkpoint-")):
            shutil.rmtree(path)
            removed.append(path.name)
    return removed


def write_marker(location: str, step: int) -> None:
    payload = json.dumps({"global_step": step, "completed_at": time.time()})
    storage.write_text(_join(location, MARKER), payload)


def latest_checkpoint(local_dir: Path, mirror: str | None) -> Path | None:
    """The newest complete checkpoint as a local folder, downloading it from the mirror when that one is newer."""
    local = complete_checkpoints(local_dir)
    remote = complete_checkpoints(mirror) if mirror else []
    best_local = local[-1] if local else None
    best_remote = remote[-1] if remote else None
    if best_remote and (best_local is None or best_remote[0] > best_local[0]):
        step, location = best_remote
        target = local_dir / f"checkpoint-{step}"
        local_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".checkpoint-{step}.", dir=local_dir))
        try:
            storage.download_dir(location, staging)
            (staging / MARKER).unlink(missing_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_marker(str(target), step)
        log.info("downloaded checkpoint-%d from %s", step, location)
        return target
    return Path(best_local[1]) if best_local else None


class CompleteCheckpointCallback(TrainerCallback):
    """After each save: wait for all ranks, mirror the checkpoint, then mark it complete; prune old ones."""

    def __init__(self, local_dir: Path, mirror: str | None, keep: int):
        self.local_dir = Path(local_dir)
        self.mirror = mirror
        self.keep = keep

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its part (rng_state_<rank>.pth) before the marker says "complete"
        if state.is_world_process_zero:
            step = state.global_step
            folder = self.local_dir / f"checkpoint-{step}"
            if self.mirror:
                remote = _join(self.mirror, folder.name)
                storage.upload_dir(folder, remote)
                write_marker(remote, step)
            write_marker(str(folder), step)
            for _, old in complete_checkpoints(self.local_dir)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return control


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
