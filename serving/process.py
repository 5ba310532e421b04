"""Start the model server as a child process, wait until it is ready, and stop it (tests, benchmarks, demo)."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from medssr.serving.config import ServeConfig


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def serve_command(config: ServeConfig) -> list[str]:
    """The ``medssr serve`` command line that runs ``config``."""
    command = [sys.executable, "-m", "medssr.cli", "serve", "--local", config.model]
    for item in dataclasses.fields(ServeConfig):
        if item.name == "model":
            continue
        flag, value = "--" + item.name.replace("_", "-"), getattr(config, item.name)
        if isinstance(value, bool):
            command += [flag] if value else []
        else:
            command += [flag, str(value)]
    return command


class ServerProcess:
    """``medssr serve`` for one ``ServeConfig`` in a child process; a context manager. ``command`` and
    ``ready_path`` are what a subclass changes to start another server the same way (bench/serving.py)."""

    ready_path = "/v2/health/ready"
    openai_path = "/openai/v1"

    def __init__(self, config: ServeConfig, log_path: str | os.PathLike, env: dict[str, str] | None = None):
        self.config = config
        self.log_path = Path(log_path)
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, timeout_s: float = 120.0) -> ServerProcess:
        import httpx

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"model server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"model server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def command(self) -> list[str]:
        return serve_command(self.config)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
