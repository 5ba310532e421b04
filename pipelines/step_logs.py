"""Local runs print one line per step; what the steps print (the KFP executor's JSON, progress bars,
tracebacks) goes to a log file per step.

kfp.local writes everything to ``sys.stdout``: its own "Executing task" / "finished with status"
lines and every line a step's subprocess prints. :class:`StepLogs` stands in for ``sys.stdout``
while the pipeline runs, files each line under the step it belongs to, and shows the console a
progress line per step; when a step fails, the end of its log follows on the console.
"""

from __future__ import annotations

import io
import re
import sys
import time
from pathlib import Path
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
FAILURE_TAIL_LINES = 40


class StepLogs(io.TextIOBase):
    """A text stream that writes every line to ``folder/all.log`` and the current step's own
    ``folder/<step>.log``, and shows ``console`` one line per finished step."""

    def __init__(self, folder: str | Path, console: TextIO | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.console = console or sys.__stdout__
        self.all = (self.folder / "all.log").open("a", encoding="utf-8")
        self.step: str | None = None
        self.step_file: TextIO | None = None
        self.started = 0.0
        self.count = 0
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.all.flush()
        if self.step_file:
            self.step_file.flush()

    def _line(self, line: str) -> None:
        plain = _ANSI.sub("", line)
        self.all.write(plain + "\n")
        started, finished = _STARTED.search(plain), _FINISHED.search(plain)
        if started:
            self._close_step()
            self.step, self.started, self.count = started.group(1), time.perf_counter(), self.count + 1
            self.step_file = (self.folder / f"{self.step}.log").open("w", encoding="utf-8")
            self.console.write(f"  [{self.count}] {self.step} ...")
            self.console.flush()
        if self.step_file:
            self.step_file.write(plain + "\n")
        if finished and finished.group(1) == self.step:
            status = finished.group(2)
            self.console.write(f" {status.lower()} ({time.perf_counter() - self.started:.1f} s)\n")
            if status != "SUCCESS":
                self._show_tail()
            self.console.flush()
            self._close_step()

    def _show_tail(self) -> None:
        self.step_file.flush()
        path = self.folder / f"{self.step}.log"
        tail = path.read_text(encoding="utf-8").splitlines()[-FAILURE_TAIL_LINES:]
        self.console.write(f"  --- the last {len(tail)} lines of {path} ---\n")
        self.console.write("".join(f"  | {line}\n" for line in tail))

    def _close_step(self) -> None:
        if self.step_file:
            self.step_file.close()
        self.step, self.step_file = None, None

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        if self.step is not None:  # the run stopped inside a step (an exception in the orchestrator)
            self.console.write(" stopped\n")
            self.console.flush()
        super().close()  # flushes
        self._close_step()
        self.all.close()
