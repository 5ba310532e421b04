"""Kill a local pipeline run at any moment, run it again, and it completes: its step processes end with the
runner, the stages that finished are reused (by content, not path), and the MLflow runs it left RUNNING are closed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from medssr.lifetime import RUN_FOLDER_ENV
from medssr.pipelines.resume import MARKER, resumable

MEDSSR = str(Path(sys.executable).with_name("medssr"))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its parent has not collected it yet


def processes_of_run(run_folder: Path) -> list[int]:
    """Every live process that inherited this run's folder variable (steps, torchrun, ranks), wherever it was reparented."""
    needle = f"{RUN_FOLDER_ENV}={run_folder}".encode() + b"\0"
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if needle in (proc / "environ").read_bytes() and alive(int(proc.name)):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


# ---------------------------------------------------------------------------------------------- markers


def test_a_finished_step_is_reused_and_a_changed_input_content_reruns_it(tmp_path, monkeypatch):
    from kfp import dsl

    run_folder = tmp_path / "workspace" / "run-1"
    monkeypatch.setenv(RUN_FOLDER_ENV, str(run_folder))
    calls = []

    @resumable("count-{word}")
    def count(word: str, data_path: str, workspace: str, counted) -> dict:
        calls.append(word)
        lines = Path(data_path).read_text().splitlines()
        Path(counted.path).parent.mkdir(parents=True, exist_ok=True)
        Path(counted.path).write_text(f"{len(lines)}\n")
        counted.metadata["lines"] = len(lines)
        return {"lines": len(lines)}

    def artifact(attempt: int):  # kfp.local gives every attempt new artifact paths
        return dsl.Dataset(name="counted", uri=str(tmp_path / f"kfp-{attempt}" / "counted"), metadata={})

    data = tmp_path / "data.jsonl"
    data.write_text("a\nb\n")
    workspace = str(tmp_path / "workspace")
    first = artifact(1)
    assert count("alpha", str(data), workspace, first) == {"lines": 2} and calls == ["alpha"]
    assert (run_folder / "count-alpha" / MARKER).is_file()

    again = artifact(2)
    assert count("alpha", str(data), workspace, again) == {"lines": 2} and calls == ["alpha"]  # reused
    assert Path(again.path).read_text() == "2\n" and again.metadata == {"lines": 2}

    moved = tmp_path / "elsewhere.jsonl"  # same contents at another path: still the same input
    shutil.copyfile(data, moved)
    assert count("alpha", str(moved), workspace, artifact(3)) == {"lines": 2} and calls == ["alpha"]

    data.write_text("a\nb\nc\n")  # same path, new contents: done again
    assert count("alpha", str(data), workspace, artifact(4)) == {"lines": 3} and calls == ["alpha", "alpha"]
    assert count("beta", str(data), workspace, artifact(5)) == {"lines": 3} and calls == ["alpha", "alpha", "beta"]


# ---------------------------------------------------------------------------------------------- lifetime

RUNNER = textwrap.dedent("""
    import os, subprocess, sys, time
    from medssr.lifetime import RUN_FOLDER_ENV, RunnerLock
    folder = sys.argv[1]
    RunnerLock(folder).acquire()
    os.environ[RUN_FOLDER_ENV] = folder
    # like kfp.local: the step through `sh -c`, so the step's parent is not the runner
    subprocess.Popen(["sh", "-c", f"{sys.executable} -c \\"$0\\"", sys.argv[2]])
    time.sleep(600)
""")
STEP = textwrap.dedent("""
    import os, subprocess, sys, time
    from medssr.lifetime import RUN_FOLDER_ENV, register_child_group, watch_runner
    watch_runner()
    # like the local training launcher: torchrun in a session of its own, with a child (a rank)
    job = subprocess.Popen(["sh", "-c", "sleep 600 & wait"], start_new_session=True)
    register_child_group(job.pid)
    with open(os.path.join(os.environ[RUN_FOLDER_ENV], "pids.json.tmp"), "w") as handle:
        handle.write(str([os.getpid(), job.pid]))
    os.replace(os.path.join(os.environ[RUN_FOLDER_ENV], "pids.json.tmp"), os.path.join(os.environ[RUN_FOLDER_ENV], "pids.json"))
    time.sleep(600)
""")


def test_a_step_and_the_process_groups_it_started_end_with_a_killed_runner(tmp_path):
    folder = tmp_path / "run-kill"
    runner = subprocess.Popen([sys.executable, "-c", RUNNER, str(folder), STEP], start_new_session=True)
    try:
        pids_file = folder / "pids.json"
        wait_until(pids_file.is_file, 60, "the step started its job")
        step, job = json.loads(pids_file.read_text())
        wait_until(lambda: len(processes_of_run(folder)) >= 4, 30, "step, job and its child running")  # step's sh, step, job sh, sleep
        assert alive(step) and alive(job)
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        remaining = wait_until(lambda: not processes_of_run(folder) or None, 30,
                               f"no process of the run left (still: {processes_of_run(folder)})")
        assert remaining is True
    finally:
        for pid in processes_of_run(folder):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------- the pipeline


def mlflow_states(db: Path, run_id: str) -> list[tuple[str, str, str]]:
    """(stage or PARENT, MLflow run id, status) of a pipeline run, in creation order."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("medssr").experiment_id
    runs = sorted(client.search_runs([experiment], f"tags.`medssr.pipeline_run_id` = '{run_id}'"), key=lambda r: r.info.start_time)
    return [(r.data.tags.get("medssr.stage", "PARENT"), r.info.run_id, r.info.status) for r in runs]


def print_states(title: str, states) -> None:
    print(f"\n{title}")
    for stage, run, status in states:
        print(f"  {stage:<18} {run}  {status}")


@pytest.mark.slow
def test_a_pipeline_killed_in_stage_2_resumes_reusing_the_finished_stages(tmp_path, mlflow_empty_db):
    (tmp_path / ".medssr").mkdir()
    db = tmp_path / ".medssr" / "mlflow.db"
    shutil.copyfile(mlflow_empty_db, db)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [MEDSSR, "pipeline", "run", "--local", "--preset", "tiny", "--param", "run_id=killed-run"]
    run_folder = tmp_path / ".medssr" / "workspace" / "killed-run"
    with (tmp_path / "first.log").open("w") as log:
        runner = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Stage 2 is under way once its torchrun writes its log.
        def stage_2_started():
            assert runner.poll() is None, (tmp_path / "first.log").read_text()[-3000:]  # a run that failed early fails here
            return list((run_folder / "train-supervised" / "launch").glob("*/train.log"))

        wait_until(stage_2_started, 600, "stage 2 (train-supervised) started training", interval=0.5)
        assert runner.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert processes_of_run(run_folder)  # the train step and its torchrun
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        wait_until(lambda: not processes_of_run(run_folder) or None, 30,
                   f"no step or training process outlives the runner (still: {processes_of_run(run_folder)})")
    finally:
        for pid in processes_of_run(run_folder):
            os.kill(pid, signal.SIGKILL)

    before = mlflow_states(db, "killed-run")
    print_states("MLflow runs after the SIGKILL in stage 2:", before)
    status = {stage: state for stage, _, state in before}
    assert status["PARENT"] == "RUNNING" and status["train-supervised"] == "RUNNING"
    finished_before = {stage: run for stage, run, state in before if state == "FINISHED"}
    assert set(finished_before) == {"prepare", "synthesize", "pseudo_label", "train-self"}
    stage1_model = run_folder / "train-self" / "model"
    stage1_files = {p: p.stat().st_mtime_ns for p in stage1_model.rglob("*") if p.is_file()}

    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "marked KILLED" in result.stdout and "resuming run killed-run in its MLflow parent run" in result.stdout
    after = mlflow_states(db, "killed-run")
    print_states("MLflow runs after the rerun:", after)

    parent_before = next(run for stage, run, _ in before if stage == "PARENT")
    assert [(run, state) for stage, run, state in after if stage == "PARENT"] == [(parent_before, "FINISHED")]
    killed = next(run for stage, run, _ in before if stage == "train-supervised")
    assert [(run, state) for stage, run, state in after if stage == "train-supervised"][0] == (killed, "KILLED")
    assert [state for stage, _, state in after if stage == "train-supervised"] == ["KILLED", "FINISHED"]
    for stage, run in finished_before.items():  # not redone: the same single run, and the step said so
        assert [r for s, r, _ in after if s == stage] == [run], stage
        assert f"medssr: {stage} finished earlier in run killed-run; reusing its outputs" in (
            tmp_path / ".medssr" / "kfp" / "logs" / "killed-run" / "all.log").read_text()
    assert {p: p.stat().st_mtime_ns for p in stage1_model.rglob("*") if p.is_file()} == stage1_files
    assert {stage for stage, _, state in after if state == "FINISHED"} >= {"evaluate", "register", "promote"}
    assert all(state in ("FINISHED", "KILLED") for _, _, state in after)


def test_only_parents_whose_runner_is_gone_on_this_machine_are_marked_killed(tmp_path, mlflow_empty_db):
    import socket

    from medssr.lifetime import RunnerLock, runner_lock_path
    from medssr.pipelines.resume import RUNNER_HOST_TAG, RUNNER_LOCK_TAG, close_abandoned_runs, reopen_parent_run
    from medssr.tracking import Tracker, TrackingConfig

    db = tmp_path / "mlflow.db"
    shutil.copyfile(mlflow_empty_db, db)
    tracker = Tracker(TrackingConfig(tracking_uri=f"sqlite:///{db}", experiment="sweep"))
    here = socket.gethostname()
    alive_lock = RunnerLock(tmp_path / "alive").acquire()
    try:
        tags = {
            "killed": {RUNNER_LOCK_TAG: str(runner_lock_path(tmp_path / "killed")), RUNNER_HOST_TAG: here},
            "alive": {RUNNER_LOCK_TAG: str(alive_lock.path), RUNNER_HOST_TAG: here},
            "elsewhere": {RUNNER_LOCK_TAG: str(runner_lock_path(tmp_path / "elsewhere")), RUNNER_HOST_TAG: "another-host"},
            "cluster": {},
        }
        parents = {name: tracker.start_pipeline_run(name, tags=t) for name, t in tags.items()}
        stage_tags = {"medssr.pipeline_run_id": "killed", "medssr.kind": "stage"}
        finished = tracker.create_run({**stage_tags, "medssr.stage": "train-self"})
        tracker.finish_run(finished)
        stage = tracker.create_run({**stage_tags, "medssr.stage": "evaluate"})  # running when the runner was killed

        assert close_abandoned_runs(tracker, "resumed-elsewhere") == [parents["killed"]]
        status = {name: tracker.client.get_run(run).info.status for name, run in parents.items()}
        assert status == {"killed": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "cluster": "RUNNING"}
        assert tracker.client.get_run(stage).info.status == "KILLED"
        assert tracker.client.get_run(finished).info.status == "FINISHED"
        assert reopen_parent_run(tracker, "killed") == parents["killed"]
        reopened = tracker.client.get_run(parents["killed"])
        assert reopened.info.status == "RUNNING" and reopened.data.tags["medssr.attempts"] == "2"
        assert reopen_parent_run(tracker, "never-started") is None
    finally:
        alive_lock.release()
