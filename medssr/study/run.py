"""``run_study``: every arm of a study, each step once, resumable.

The study folder holds one subfolder per step (prepare, synthesize, label, seen, plant-<precision>, train-<run>,
arm-<arm>; :mod:`medssr.study.plan` says which);
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

from medssr.study.config import StudyConfig
from medssr.study.folder import Study

log = logging.getLogger(__name__)


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
        run = config.plan.arms[arm].model
        inputs(study, tracking)  # every arm is evaluated on the in-distribution set, which labelling's questions make
        if run is None:
            study.step(f"arm-{arm}", lambda folder: steps.evaluate_chance(study, folder))
        else:
            model = trained_model(study, run, tracking)
            study.step(f"arm-{arm}", lambda folder, arm=arm, model=model: steps.evaluate_arm(study, arm, model, folder))
        tracking.record_finished_steps()
    finished = [arm for arm in config.plan.arms if study.finished(f"arm-{arm}")]
    missing = [arm for arm in config.plan.arms if arm not in finished]
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
    spec = study.config.plan.runs[run]
    start_model = trained_model(study, spec.start, tracking)
    data_path = training_data(study, spec.data, tracking)
    done = study.step(f"train-{run}", lambda folder: steps.train(study, run, spec, start_model, data_path, folder))
    tracking.record_finished_steps()
    return done["model_dir"]


def inputs(study: Study, tracking) -> dict[str, str]:
    """The training data every arm shares: stage-2 questions, pseudo-labels and their knowledge-base twins."""
    from medssr.study import steps

    prepared = study.step("prepare", lambda folder: steps.prepare(study, folder))
    synthesized = study.step("synthesize", lambda folder: steps.synthesize(study, prepared, folder))
    labeled = study.step("label", lambda folder: steps.label(study, prepared, synthesized, folder))
    if study.config.seen_per_item:
        study.step("seen", lambda folder: steps.seen(study, prepared, labeled, folder))
    tracking.record_finished_steps()
    return {"stage2": prepared["stage2"], "pseudo_labels": labeled["pseudo_labels"], "kb_labels": labeled["kb_labels"]}


def training_data(study: Study, data: str, tracking) -> str:
    """The file of a training run's data: a shared input, or the planted labels of one precision (made once)."""
    from medssr.study import steps
    from medssr.study.plan import planted_name

    shared = inputs(study, tracking)
    if data in shared:
        return shared[data]
    precision = next(p for p in study.config.plan.planted if planted_name(p) == data)
    done = study.step(f"plant-{precision}", lambda folder: steps.plant(study, precision, shared["kb_labels"], folder))
    tracking.record_finished_steps()
    return done["labels"]
