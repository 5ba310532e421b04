"""Local backend: the training entry point under torchrun as a subprocess on this machine."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medssr.launch.base import JobHandle, JobSpec, JobStatus, last_lines, torchrun_command
from medssr.lifetime import die_with_parent, forget_child_group, register_child_group


@dataclass
class LocalLauncherConfig:
    """Run training as `python -m torch.distributed.run --standalone ...` on this machine."""

    backend: Literal["local"] = field(default="local", metadata={"help": "Selects this backend."})
    work_dir: str = field(default=".medssr/launch", metadata={"help": "Each job's log goes to WORK_DIR/<job name>/train.log."})
    python: str = field(default=sys.executable, metadata={"help": "Python interpreter with medssr and torch installed."})
    delete_on_timeout: bool = field(default=True, metadata={"help": "Stop the process tree when wait() times out."})
    log_tail_lines: int = field(default=20, metadata={"help": "Last log lines quoted in a Failed status."})
    stop_grace_s: float = field(default=10.0, metadata={"help": "Seconds between SIGTERM and SIGKILL on delete."})


@dataclass
class _LocalJob:
    process: subprocess.Popen
    log_path: Path
    pump: threading.Thread


class LocalLauncher:
    backend = "local"

    def __init__(self, config: LocalLauncherConfig | None = None) -> None:
        self.config = config or LocalLauncherConfig()
        self._jobs: dict[str, _LocalJob] = {}

    def submit(self, spec: JobSpec) -> JobHandle:
        name = spec.job_name
        if name in self._jobs and self._jobs[name].process.poll() is None:
            raise RuntimeError(f"local job {name} is already running")
        log_path = Path(self.config.work_dir) / name / "train.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
        # Secrets are not resolved locally: variables named in secret_env come from this process's environment.
        command = torchrun_command(spec, python=self.config.python, standalone=True)
        log_file = log_path.open("wb")
        log_file.write(f"$ {' '.join(command)}\n".encode())
        log_file.flush()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # one process group: delete() stops torchrun and every rank together
            preexec_fn=die_with_parent,  # torchrun (which stops its ranks) ends with this process
        )
        register_child_group(process.pid)
        pump = threading.Thread(target=_copy_output, args=(process, log_file), daemon=True, name=f"log-{name}")
        pump.start()
        self._jobs[name] = _LocalJob(process, log_path, pump)
        return JobHandle(backend=self.backend, name=name, log_path=log_path)

    def _job(self, handle: JobHandle) -> _LocalJob:
        try:
            return self._jobs[handle.name]
        except KeyError:
            raise KeyError(f"local job {handle.name} was not submitted by this launcher") from None

    def status(self, handle: JobHandle) -> JobStatus:
        job = self._job(handle)
        code = job.process.poll()
        if code is None:
            return JobStatus("Running")
        forget_child_group(job.process.pid)
        job.pump.join(timeout=5)  # the log is complete before we quote it
        if code == 0:
            return JobStatus("Succeeded", "Completed", f"exit status 0; log {job.log_path}")
        reason = f"Signal{-code}" if code < 0 else f"ExitCode{code}"
        excerpt = failure_excerpt(job.log_path.read_text(errors="replace"), self.config.log_tail_lines)
        return JobStatus("Failed", reason, f"exit status {code}; last log lines ({job.log_path}):\n{excerpt}")

    def wait(self, handle: JobHandle, timeout: float | None = None) -> JobStatus:
        job = self._job(handle)
        try:
            job.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if self.config.delete_on_timeout:
                self.delete(handle)
            action = "stopped" if self.config.delete_on_timeout else "left running"
            return JobStatus("Timeout", "Timeout", f"not finished after {timeout:g} s; process {action}; log {job.log_path}")
        return self.status(handle)

    def logs(self, handle: JobHandle, follow: bool = False) -> Iterator[str]:
        job = self._job(handle)
        with job.log_path.open("r", errors="replace") as log:
            pending = ""
            while True:
                chunk = log.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        yield pending.rstrip("\n")
                        pending = ""
                    continue
                if not follow or (job.process.poll() is not None and not job.pump.is_alive()):
                    if pending:
                        yield pending
                    return
                time.sleep(0.2)

    def delete(self, handle: JobHandle) -> None:
        job = self._job(handle)
        if job.process.poll() is None:
            _signal_group(job.process, signal.SIGTERM)
            try:
                job.process.wait(timeout=self.config.stop_grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(job.process, signal.SIGKILL)
                job.process.wait()
        job.pump.join(timeout=5)


# torchrun's own report of a failed rank; its traceback that follows says nothing about the training error.
_TORCHRUN_FAILURE = re.compile(r"torch/distributed/elastic/multiprocessing/api\.py.*\] failed \(exitcode")


def failure_excerpt(log_text: str, count: int) -> str:
    """The last `count` lines the ranks wrote before torchrun reported the failure (plus that report)."""
    lines = log_text.rstrip("\n").splitlines()
    for index, line in enumerate(lines):
        if _TORCHRUN_FAILURE.search(line):
            return "\n".join(lines[max(0, index - count) : index + 1])
    return last_lines(log_text, count)


def _copy_output(process: subprocess.Popen, log_file) -> None:
    with log_file:
        for line in iter(process.stdout.readline, b""):
            log_file.write(line)
            log_file.flush()
    process.stdout.close()


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass
