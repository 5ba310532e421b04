"""Fixture ``medssr_image``: the CPU image ``make image`` builds, and containers of it run the way Kubernetes runs
them (the pod's ``command`` replaces the image's ENTRYPOINT, ``args`` its CMD; the image's user, environment and
working folder apply; volumes are bind mounts).

Containers are buildah working containers run with ``buildah run --isolation chroot``: no daemon, no OCI runtime,
the host's network (a server in the container on 127.0.0.1 is reachable from the test). Every file a container
writes outside its bind mounts lands in its overlay's upper layer, which ``Container.written`` lists.

Skips when buildah or the image is absent, or the image is older than the sources (``make image`` builds it;
``make test`` does where buildah can run); under CI (CI=1) each of these fails instead, so what runs there is what
the tree builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from medssr.cluster import DEFAULT_IMAGE

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The CPU image the compiled pipeline's steps name (MEDSSR_IMAGE, else the default), which `make image` tags.
IMAGE = os.environ.get("MEDSSR_IMAGE") or DEFAULT_IMAGE
HOME = "/home/medssr"
SITE_PACKAGES = "opt/venv/lib/python3.11/site-packages"
MAKE_IMAGE = "`make image` (scripts/build-image.sh) builds it"


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["buildah", *args], check=False, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return result.stdout


@dataclass(frozen=True)
class ImageConfig:
    name: str
    entrypoint: list[str]
    cmd: list[str]
    user: str

    @classmethod
    def inspect(cls, name: str) -> ImageConfig:
        config = json.loads(buildah("inspect", "--type", "image", name))["OCIv1"]["config"]
        return cls(name, config.get("Entrypoint") or [], config.get("Cmd") or [], config.get("User", ""))

    def argv(self, command: list[str] | None = None, args: list[str] | None = None) -> list[str]:
        """What a container with this pod ``command`` / ``args`` executes (Kubernetes' rule)."""
        if command:
            return [*command, *(args or [])]
        return [*self.entrypoint, *(self.cmd if args is None else args)]


class Container:
    """A working container of the image; ``run`` executes one command in it, as the image's user."""

    def __init__(self, image: ImageConfig):
        self.name = buildah("from", "--pull=never", "--quiet", image.name).strip()
        self.mounts: set[str] = set()

    def _command(self, argv: list[str], volumes: dict, env: dict | None) -> list[str]:
        command = ["buildah", "run", "--isolation", "chroot"]
        for host, target in volumes.items():
            target, _, mode = str(target).partition(":")
            self.mounts.add(target)
            command += ["-v", f"{Path(host).resolve()}:{target}:{mode or 'rw'}"]
        for key, value in (env or {}).items():
            command += ["-e", f"{key}={value}"]
        return [*command, self.name, "--", *argv]

    def run(self, argv: list[str], volumes: dict | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self._command(argv, volumes or {}, env), check=False, capture_output=True, text=True, timeout=timeout)

    def start(self, argv: list[str], log: Path, volumes: dict | None = None, env: dict | None = None) -> subprocess.Popen:
        """The command in the background (a server); stop it with ``stop``."""
        with log.open("wb") as out:
            return subprocess.Popen(self._command(argv, volumes or {}, env), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    @staticmethod
    def command_pid(process: subprocess.Popen) -> int | None:
        """The container's command under ``buildah run`` (its first descendant that is not buildah's own helper)."""
        todo = [process.pid]
        while todo:
            pid = todo.pop(0)
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                # buildah is Go: any of its threads may be the parent, so every thread's children count
                children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
            except OSError:
                continue
            if pid != process.pid and "buildah" not in comm:
                return pid
            todo += [int(child) for child in children]
        return None

    @classmethod
    def stop(cls, process: subprocess.Popen, timeout: float = 30) -> int:
        """SIGTERM to the container's command, as the kubelet sends it (buildah run itself answers SIGTERM by killing
        its command), then SIGKILL to the whole group when it does not exit in time; returns the exit status."""
        if process.poll() is None:
            pid = cls.command_pid(process)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def rootfs(self) -> Path:
        return Path(buildah("mount", self.name).strip())

    def written(self, besides: list[str] = ()) -> list[str]:
        """Every path the container's commands created or changed outside its bind mounts and the folders ``besides``
        (its overlay upper layer), less the mount points themselves and the folders above them."""
        layer = self.rootfs().parent
        upper = layer / "diff"
        if not upper.is_dir():
            raise RuntimeError(f"no overlay upper layer at {upper}: buildah's storage driver is not overlay")
        # The image's layers (overlay's "lower" file: links relative to the driver's folder, top first).
        lowers = [layer.parent / link for link in (layer / "lower").read_text().strip().split(":") if link]
        mount_points = {"/"}
        for target in self.mounts:
            parts = Path(target).parts
            mount_points |= {str(Path(*parts[: i + 1])) for i in range(len(parts))}
        changed = []
        for path in sorted(upper.rglob("*")):
            inside = "/" + path.relative_to(upper).as_posix()
            if any(inside == m or inside.startswith(m.rstrip("/") + "/") for m in [*self.mounts, *besides]):
                continue
            # A folder copied up because something was mounted in it is not a write; a new one or a file is.
            if path.is_dir() and not path.is_symlink() and (inside in mount_points or any((lower / inside[1:]).is_dir() for lower in lowers)):
                continue
            changed.append(inside)
        return changed

    def remove(self) -> None:
        buildah("rm", self.name)


def source_digest() -> dict[str, str]:
    """sha256 of every file the wheel installs from the mapped folders, by installed path (medssr/...)."""
    digests = {}
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                name = f"{package.replace('.', '/')}/{path.relative_to(ROOT / folder).as_posix()}"
                digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def stale_files(rootfs: Path) -> list[str]:
    installed = rootfs / SITE_PACKAGES
    stale = []
    for name, digest in source_digest().items():
        path = installed / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            stale.append(name)
    return stale


def _missing(message: str):
    """Skip, or fail under CI (CI=1), where `make test` must have built the image."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def medssr_image() -> ImageConfig:
    try:
        buildah("--version")
    except (FileNotFoundError, RuntimeError) as error:
        _missing(f"no buildah ({error}): {MAKE_IMAGE} with buildah, as root")
    try:
        image = ImageConfig.inspect(IMAGE)
    except RuntimeError:
        _missing(f"no image {IMAGE} in buildah's storage: {MAKE_IMAGE}")
    probe = Container(image)
    try:
        stale = stale_files(probe.rootfs())
    finally:
        probe.remove()
    if stale:
        _missing(f"image {IMAGE} is older than the sources ({len(stale)} files differ, first {stale[0]}): run `make image` again")
    return image


@pytest.fixture
def container(medssr_image):
    box = Container(medssr_image)
    yield box
    box.remove()
