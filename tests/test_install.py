"""A real install: the wheel built from the files an image build copies, installed without editable mode into a
fresh venv, runs ``medssr --help`` and a command of each layer (models, kube manifests, pipelines and their
components, serving). The editable install of ``make`` reads the source tree and hides a package or data file
that pyproject's discovery leaves out; this install carries only what the wheel carries.

The venv sees the dev environment's dependencies through a ``.pth`` line (installing them again would take
minutes); the wheel is installed ``--no-deps`` into the venv's own site-packages, which comes first on sys.path,
and the test checks that ``medssr`` is imported from there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# What an image build copies besides the package folders (Dockerfile COPY lines; tests/test_dockerfile.py checks them).
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")

pytestmark = pytest.mark.slow


def _run(command: list, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """The wheel setuptools builds from a copy of the build context (the repository is never written to)."""
    context = tmp_path_factory.mktemp("context")
    for name in BUILD_FILES:
        shutil.copy2(ROOT / name, context / name)
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(ROOT / folder, context / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, context], cwd=context)
    (wheel,) = dist.glob("medssr-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(built_wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed (no deps); returns its bin folder."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv)
    purelib = Path(subprocess.check_output([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True).strip())
    (purelib / "dev-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", "--no-deps", "--no-index", built_wheel],
         cwd=venv)
    return venv / "bin"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**clean, "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path_factory.mktemp("home"))}


@pytest.fixture(scope="module")
def model(installed, env, tmp_path_factory) -> Path:
    """models: the tiny model, built by the installed package."""
    folder = tmp_path_factory.mktemp("model") / "tiny"
    _run([installed / "medssr", "models", "tiny", folder], folder.parent, env)
    return folder


def test_wheel_carries_every_package_and_data_file(built_wheel):
    """Every Python file and YAML file under the mapped folders is in the wheel, at its mapped name."""
    names = set(zipfile.ZipFile(built_wheel).namelist())
    expected = set()
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        prefix = package.replace(".", "/")
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".yaml") and "__pycache__" not in path.parts:
                expected.add(f"{prefix}/{path.relative_to(ROOT / folder).as_posix()}")
    assert expected - names == set(), "left out of the wheel"
    assert {"medssr/kube/__init__.py", "medssr/pipelines/compiled/medssr.yaml", "medssr/pipelines/presets/tiny.yaml"} <= names


def test_installed_cli_runs_each_layer(installed, env, model, tmp_path):
    medssr = installed / "medssr"
    where = _run([installed / "python", "-c", "import medssr, medssr.kube; print(medssr.__file__)"], tmp_path, env).stdout
    assert where.startswith(str(installed.parent)), f"medssr imported from {where}, not from the installed wheel"
    assert "COMMAND" in _run([medssr, "--help"], tmp_path, env).stdout
    assert (model / "config.json").is_file() and (model / "model.safetensors").is_file()

    # kube: the training job's manifest (medssr.kube.manifests)
    job = _run([medssr, "train", "--launcher", "pytorchjob", "--dry-run", "--run-id", "r1", "--image", "medssr:test",
                "--stage", "self", "--model", model, "--data", ROOT / "tests" / "data" / "train_self.jsonl",
                "--out", tmp_path / "out"], tmp_path, env).stdout
    assert "kind: PyTorchJob" in job and "medssr.training" in job

    # pipelines + components: the presets (package data), the pipeline compiled from the installed components, and
    # the compiled pipeline `medssr pipeline submit` sends (package data)
    params = _run([medssr, "pipeline", "params", "--preset", "tiny"], tmp_path, env).stdout
    assert "train_self.max_steps" in params
    compiled = tmp_path / "compiled.yaml"
    _run([medssr, "pipeline", "compile", "--out", compiled], tmp_path, env)
    assert "exec-train" in compiled.read_text()
    shipped = _run([installed / "python", "-c", "from medssr.pipelines.runner import COMPILED; print(COMPILED.is_file(), COMPILED)"],
                   tmp_path, env).stdout
    assert shipped.startswith(f"True {installed.parent}")


def test_installed_server_answers(installed, env, model, tmp_path):
    """serving: `medssr serve` from the wheel is ready and lists its model on KServe's OpenAI route."""
    import httpx
    from medssr.serving.process import free_port

    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([installed / "medssr", "serve", "--local", model, "--host", "127.0.0.1", "--port", str(port),
                               "--torch-threads", "1"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"server exited {server.returncode}:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in 120 s:\n{(tmp_path / 'serve.log').read_text()[-3000:]}"
            time.sleep(0.2)
        models = httpx.get(f"http://127.0.0.1:{port}/openai/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["medssr"]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
