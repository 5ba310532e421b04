"""Checkpoints that a restart can trust.

The Trainer writes ``checkpoint-N`` in place, so a process killed mid-save leaves a folder that looks
like a checkpoint but is not one. A checkpoint counts only once :class:`CompleteCheckpointCallback`
has written the marker file into it, after every rank finished writing; the mirror copy (local folder or
s3://) is uploaded without it and gets its own marker last. A mirror that does not answer does not stop
training: the checkpoint stays unmarked there, and the next save uploads what the mirror missed first.
Restarts pick the newest marked checkpoint, here or in the mirror, and delete unmarked local ones.

The marker also records the run's provenance (:func:`provenance`): a resume under a different config
is refused with the differences, so a folder never mixes two runs' weights and settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path

from transformers import TrainerCallback

from medssr import storage
from medssr.errors import UserError

log = logging.getLogger(__name__)

MARKER = "medssr-checkpoint-complete.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# Settings a resume may change: where the run writes, how often it saves and logs, how long it trains
# (the step budget) and how it fits in memory. Every other setting shapes the weights.
RESUMABLE_SETTINGS = frozenset({
    "output_dir", "checkpoint_dir", "max_steps", "num_train_epochs", "save_steps", "save_total_limit",
    "logging_steps", "vllm_gpu_memory_utilization", "vllm_kv_cache_gib", "gradient_checkpointing", "overwrite",
})


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


def provenance(config, data_path: str | Path) -> dict:
    """The settings a checkpoint was trained with and must be resumed with; the data by content, not path."""
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in RESUMABLE_SETTINGS and k != "data"}
    settings["data_sha256"] = hashlib.sha256(Path(data_path).read_bytes()).hexdigest()
    return json.loads(json.dumps(settings))  # as the marker's JSON will give it back


def write_marker(location: str, step: int, run: dict) -> None:
    payload = json.dumps({"global_step": step, "completed_at": time.time(), "run": run})
    storage.write_text(_join(location, MARKER), payload)


def check_provenance(checkpoint: Path, run: dict) -> None:
    """Refuse to resume ``checkpoint`` under settings other than those that wrote it, naming each difference."""
    recorded = json.loads((checkpoint / MARKER).read_text(encoding="utf-8")).get("run")
    remedy = f"give another output folder, or start over with --overwrite (deletes {checkpoint.parent})"
    if recorded is None:
        raise UserError(f"{checkpoint}: no record of the config that wrote it, so it cannot be resumed; {remedy}")
    differences = [
        f"{key}: {recorded.get(key)!r} in the checkpoint, {run.get(key)!r} now"
        for key in sorted(set(recorded) | set(run))
        if recorded.get(key) != run.get(key)
    ]
    if differences:
        raise UserError(f"{checkpoint} was trained with other settings ({'; '.join(differences)}); {remedy}")


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
            marker = (staging / MARKER).read_text(encoding="utf-8")
            (staging / MARKER).unlink()  # written again last, once the folder is in place
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        storage.write_text(target / MARKER, marker)
        log.info("downloaded checkpoint-%d from %s", step, location)
        return target
    return Path(best_local[1]) if best_local else None


class CompleteCheckpointCallback(TrainerCallback):
    """After each save: wait for all ranks, mirror the checkpoint, then mark it complete (with the run's
    provenance); prune old ones."""

    def __init__(self, local_dir: Path, mirror: str | None, keep: int, run: dict):
        self.local_dir = Path(local_dir)
        self.mirror = mirror
        self.keep = keep
        self.run = run
        self.unmirrored: list[int] = []  # steps of complete checkpoints the mirror has not got yet, oldest first

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its part (rng_state_<rank>.pth) before the marker says "complete"
        if state.is_world_process_zero:
            step = state.global_step
            write_marker(str(self.local_dir / f"checkpoint-{step}"), step, self.run)
            if self.mirror:
                self.unmirrored.append(step)
                self.mirror_pending()
            for _, old in complete_checkpoints(self.local_dir)[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return control

    def mirror_pending(self) -> None:
        """Upload the complete checkpoints the mirror lacks (still kept here), each marked there last; a mirror
        that does not answer leaves them for the next save."""
        from medssr.dependencies import DependencyUnavailable

        while self.unmirrored:
            step = self.unmirrored[0]
            folder = self.local_dir / f"checkpoint-{step}"
            if folder.is_dir():
                remote = _join(self.mirror, folder.name)
                try:
                    storage.upload_dir(folder, remote, exclude={MARKER})
                    write_marker(remote, step, self.run)
                except DependencyUnavailable as exc:
                    log.warning("checkpoint-%d is not in the mirror yet (%s); training goes on, the next save tries again", step, exc)
                    return
                log.info("mirrored checkpoint-%d to %s", step, remote)
            self.unmirrored.pop(0)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
