"""Processes of a local pipeline run end with the runner that started them, however it ends (SIGKILL included).

The runner holds an exclusive ``flock`` on ``<workspace>/<run id>/.runner.lock`` while it runs and names its
run folder in ``MEDSSR_LOCAL_RUN_FOLDER``, which its step subprocesses inherit. The kernel drops the lock when
the runner dies, so the lock says whether a run is alive: each step watches it (:func:`watch_runner`) and, once
it is free, kills the process groups it started (a training job's torchrun and ranks) and exits; the next
runner of the run takes the lock, and a parent MLflow run whose lock is free is known to be abandoned.
A training process started by a step also gets ``PR_SET_PDEATHSIG``, so it is stopped if the step itself dies.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path

RUN_FOLDER_ENV = "MEDSSR_LOCAL_RUN_FOLDER"
RUNNER_LOCK_NAME = ".runner.lock"
WATCH_INTERVAL_S = 0.5  # how often a step checks that its runner is alive
LOCK_WAIT_S = 10.0  # a step of a killed runner may hold its probe of the lock for a moment
ABANDONED_EXIT_STATUS = 143  # as if terminated by SIGTERM
_PR_SET_PDEATHSIG = 1

_child_groups: set[int] = set()


class RunInProgress(RuntimeError):
    """Another runner holds this run's lock."""


def runner_lock_path(run_folder: str | os.PathLike) -> Path:
    return Path(run_folder) / RUNNER_LOCK_NAME


class RunnerLock:
    """The exclusive lock a live runner holds on its run folder."""

    def __init__(self, run_folder: str | os.PathLike):
        self.path = runner_lock_path(run_folder)
        self._fd: int | None = None

    def acquire(self) -> RunnerLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunInProgress(f"run {self.path.parent.name} is being run by another process (it holds {self.path})") from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock
            self._fd = None


def lock_is_held(path: str | os.PathLike) -> bool:
    """Whether a live process holds the runner lock at ``path`` (one that is not there is not held)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops a shared lock taken just now


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: SIGTERM when the thread that started it ends (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def register_child_group(pgid: int) -> None:
    """A process group this process started (in its own session) that must not outlive the run."""
    _child_groups.add(pgid)


def forget_child_group(pgid: int) -> None:
    _child_groups.discard(pgid)


def kill_child_groups() -> None:
    for pgid in list(_child_groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _child_groups.discard(pgid)


def watch_runner() -> None:
    """In a step of a local run: end this process and the groups it started once the runner is gone."""
    folder = os.environ.get(RUN_FOLDER_ENV)
    if not folder or not runner_lock_path(folder).is_file():
        return
    lock = runner_lock_path(folder)

    def watch() -> None:
        while lock_is_held(lock):
            time.sleep(WATCH_INTERVAL_S)
        kill_child_groups()
        try:
            print(f"medssr: the pipeline runner of {Path(folder).name} is gone; stopping this step", file=sys.stderr, flush=True)
        except OSError:  # the runner read our output; that pipe may be closed now
            pass
        os._exit(ABANDONED_EXIT_STATUS)

    threading.Thread(target=watch, daemon=True, name="medssr-runner-watch").start()
