"""``run_study``: every arm of a study, each step once, resumable.

The study folder holds one subfolder per step (prepare, synthesize, label, train-<run>, arm-<arm>);
a step is finished when its ``done.json`` exists, written atomically as the step's last act with its
result and wall time. A rerun skips finished steps and redoes an unfinished one from the start
(training resumes from its own checkpoints, labelling and evaluation from the completions cache),
so a part killed halfway, or run on another machine with the folder copied over, continues where it
stopped. The study's identity (every setting not marked per_part) is stored on the first run and a
rerun with other settings is refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from medssr.storage import atomic_writer
from medssr.study.config import ARMS, StudyConfig

log = logging.getLogger(__name__)

DONE = "done.json"
IN_STUDY = "<study>/"
"""How a marker writes a path inside the study folder, so the folder can be moved or copied to another machine."""
STUDY_FILE = "study.json"
PARTS_FILE = "parts.json"

TRAINING_RUNS = {
    # run: (stage, the run it starts from or "base", its data)
    "rl-real": ("supervised", "base", "stage2"),
    "self": ("self", "base", "pseudo_labels"),
    "medssr": ("supervised", "self", "stage2"),
    "oracle-stage1": ("self", "base", "kb_labels"),
    "oracle": ("supervised", "oracle-stage1", "stage2"),
}
"""The oracle's stage 1 trains on the same kept questions as self's, each rewarded by its
knowledge-base key instead of its pseudo-label: the difference is what label noise costs."""

ARM_MODELS = {"base": "base", "rl-real": "rl-real", "self": "self", "medssr": "medssr", "oracle": "oracle", "prior": None}


@dataclass
class StudyResult:
    out_dir: Path
    finished_arms: list[str]
    missing_arms: list[str]
    report: Path | None


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


def run_study(config: StudyConfig) -> StudyResult:
    """Run the arms of this part (and the steps they need), then write the report once every arm is finished."""
    from medssr.study import steps
    from medssr.study.report import write_study_report
    from medssr.study.tracking import StudyTracking

    study = Study(config)
    study.claim()
    study.record_part()
    tracking = StudyTracking(study)
    tracking.open()
    for arm in config.selected_arms():
        if arm == "prior":
            inputs(study, tracking)
            study.step("arm-prior", lambda folder: steps.evaluate_prior(study, folder))
        else:
            model = trained_model(study, ARM_MODELS[arm], tracking)
            study.step(f"arm-{arm}", lambda folder, arm=arm, model=model: steps.evaluate_arm(study, arm, model, folder))
        tracking.record_finished_steps()
    finished = [arm for arm in ARMS if study.finished(f"arm-{arm}")]
    missing = [arm for arm in ARMS if arm not in finished]
    report = None
    if not missing:
        report = write_study_report(study)
        tracking.record_report(report)
    else:
        log.info("study %s: arms still to run: %s (the report is written when every arm is finished)", study.study_id, ", ".join(missing))
    return StudyResult(study.root, finished, missing, report)


def trained_model(study: Study, run: str, tracking) -> str:
    """The model folder of ``run`` ("base" or a training run), training it and what it starts from as needed."""
    from medssr.study import steps

    if run == "base":
        return study.step("prepare", lambda folder: steps.prepare(study, folder))["base_model"]
    stage, start, data = TRAINING_RUNS[run]
    start_model = trained_model(study, start, tracking)
    data_path = inputs(study, tracking)[data]
    done = study.step(f"train-{run}", lambda folder: steps.train(study, run, stage, start_model, data_path, folder))
    tracking.record_finished_steps()
    return done["model_dir"]


def inputs(study: Study, tracking) -> dict[str, str]:
    """The training data every arm shares: stage-2 questions, pseudo-labels and their knowledge-base twins."""
    from medssr.study import steps

    prepared = study.step("prepare", lambda folder: steps.prepare(study, folder))
    synthesized = study.step("synthesize", lambda folder: steps.synthesize(study, prepared, folder))
    labeled = study.step("label", lambda folder: steps.label(study, prepared, synthesized, folder))
    tracking.record_finished_steps()
    return {"stage2": prepared["stage2"], "pseudo_labels": labeled["pseudo_labels"], "kb_labels": labeled["kb_labels"]}
