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

import logging
from dataclasses import dataclass
from pathlib import Path

from medssr.study.config import ARMS, StudyConfig
from medssr.study.folder import Study

log = logging.getLogger(__name__)

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
