"""The study in MLflow: one parent run (found again by the study's id in every part), one nested run per
finished step, the report and its headline numbers on the parent.

A step is logged after its marker is written; ``mlflow.json`` beside the marker records that it was
(and on which tracking server), so a part killed between the two logs it on the next run, and a
step is never logged twice to one server.
"""

from __future__ import annotations

import json
from pathlib import Path

from medssr.study.folder import DONE, Study, write_json
from medssr.tracking import PARENT_TAG, STAGE_TAG, StageRun, Tracker, TrackingConfig
from medssr.training.signal import tracking_fields

LOGGED = "mlflow.json"


class StudyTracking:
    def __init__(self, study: Study):
        self.study = study
        self.tracker = Tracker(TrackingConfig(tracking_uri=study.config.tracking_uri, experiment=study.config.experiment))
        self.parent = ""

    def open(self) -> None:
        """Find or create the parent run, mark it running again (a killed part left it FAILED), record the settings."""
        self.parent = self.tracker.start_pipeline_run(self.study.study_id, tags={"medssr.study_dir": str(self.study.root)})
        self.tracker.call(self.tracker.client.update_run, self.parent, status="RUNNING")
        StageRun(self.tracker, self.parent, "study").log_config(self.study.config.identity())

    def record_finished_steps(self) -> None:
        for marker in sorted(self.study.root.glob(f"*/{DONE}")):
            folder = marker.parent
            logged = folder / LOGGED
            if logged.is_file() and json.loads(logged.read_text(encoding="utf-8"))["tracking_uri"] == self.tracker.tracking_uri:
                continue
            done = self.study.read_marker(marker)
            self._drop_partial_run(folder.name)
            with self.tracker.stage(folder.name, self.parent) as run:
                self._log_step(run, folder.name, done)
            write_json(logged, {"tracking_uri": self.tracker.tracking_uri, "run_id": run.run_id})

    def _drop_partial_run(self, step: str) -> None:
        """A run of ``step`` that a killed part began but did not finish logging."""
        query = f"tags.`{PARENT_TAG}` = '{self.parent}' and tags.`{STAGE_TAG}` = '{step}'"
        for run in self.tracker.call(self.tracker.client.search_runs, [self.tracker.experiment_id], filter_string=query):
            self.tracker.call(self.tracker.client.delete_run, run.info.run_id)

    def _log_step(self, run: StageRun, step: str, done: dict) -> None:
        run.log_metrics({"wall_seconds": done["wall_seconds"]})
        if step == "prepare":
            run.log_metrics(done["counts"])
            run.log_dataset(done["stage2"], "stage2-train", "training")
        elif step == "synthesize":
            run.log_metrics({"stats": done["stats"]})
            run.log_dataset(done["items"], "synthetic", "training")
        elif step == "label":
            run.log_metrics({**done["metrics"], "kb_labelled": done["kb_labelled"]})
            for path in done["audit_paths"].values():
                run.log_artifact(path, "audit")
            run.log_dataset(done["pseudo_labels"], "pseudo-labels", "training")
        elif step.startswith("plant-"):
            run.log_metrics({"planted_precision": done["precision"], "items": done["items"]})
            run.log_dataset(done["labels"], step, "training")
        elif step.startswith("train-"):
            run.log_config(done["training_config"])
            history = [json.loads(line) for line in Path(done["history"]).read_text(encoding="utf-8").splitlines() if line.strip()]
            run.log_history(history, step_key="step")
            run.log_metrics({"final": done["metrics"]})
            run.log_artifact(done["history"], "training")
            # A run that learned nothing is flagged on its own run and on the study's.
            signal, tags, flags = tracking_fields(done["metrics"].get("learning_signal"), step)
            run.set_tags(tags)
            parent = StageRun(self.tracker, self.parent, "study")
            parent.log_metrics(signal)
            parent.set_tags(flags)
        elif step.startswith("arm-"):
            arm = done["arm"]
            values = {}
            for bench, scores in done["summary"].items():
                for metric in ("strict", "lenient", "with_recovery"):
                    values[f"{arm}.{bench}.{metric}_acc"] = scores[metric]["mean"]
                values[f"{arm}.{bench}.recovery_rate"] = scores["recovery_rate"]
            run.log_metrics(values)
            StageRun(self.tracker, self.parent, "study").log_metrics(values, prefix="eval.")
            for path in done["per_question"]:
                run.log_artifact(path, "per_question")

    def record_report(self, report: Path) -> None:
        """The report and its figures on the parent run, its headline deltas as metrics; the study is finished."""
        parent = StageRun(self.tracker, self.parent, "study")
        parent.log_artifact(report, "report")
        figures = report.with_suffix("")
        if figures.is_dir():
            parent.log_artifact(figures, f"report/{figures.name}")
        headline = json.loads((self.study.root / "report" / "paired.json").read_text(encoding="utf-8"))
        parent.log_metrics(headline, prefix="paired.")
        parent.set_tags({"medssr.report": str(report)})
        self.tracker.finish_run(self.parent, "FINISHED")
