import argparse
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import medssr
import medssr.commands

CONSOLE_SCRIPT = Path(sys.executable).parent / "medssr"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [str(CONSOLE_SCRIPT)] if CONSOLE_SCRIPT.exists() else [sys.executable, "-m", "medssr.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    commands = [info.name for info in pkgutil.iter_modules(medssr.commands.__path__)]
    assert {"demo", "models"} <= set(commands)
    for name in commands:
        assert re.search(rf"^ {{4}}{name}(\s|$)", result.stdout, re.MULTILINE), name


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"medssr {medssr.__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--model", "/nonexistent/model-folder"), "medssr demo: error: no model folder at /nonexistent/model-folder"),
        (("demo", "--max-tokens", "many"), "medssr demo: error: argument --max-tokens: max_tokens: 'many' is not a valid int"),
        (("demo", "--no-such-option"), "medssr: error: unrecognized arguments: --no-such-option"),
        (("no-such-command",), "medssr: error: argument COMMAND: invalid choice: 'no-such-command'"),
    ],
)
def test_user_errors_are_one_line_exit_2_without_traceback(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("synthesize", "--n", "5", "--rare-ratio", "1", "--out", "{file}/x.jsonl"), "cannot write {file}/x.jsonl: {file} is a file, not a folder"),
        (("synthesize", "--n", "5", "--rare-ratio", "1", "--out", "{file}/sub/x.jsonl"), "cannot write {file}/sub/x.jsonl: {file} is a file, not a folder"),
        (("synthesize", "--n", "5", "--rare-ratio", "1", "--out", "{folder}"), "cannot write {folder}: it is a folder, not a regular file"),
        (("synthesize", "--n", "5", "--rare-ratio", "1", "--out", "/dev/full"), "cannot write /dev/full: it is a character device, not a regular file"),
        (("models", "tiny", "{file}"), "cannot use {file}: {file} is a file, not a folder"),
    ],
)
def test_an_unwritable_output_path_is_one_line_exit_2(args, message, tmp_path):
    paths = {"file": tmp_path / "FILE", "folder": tmp_path / "folder"}
    paths["file"].write_text("not a folder\n")
    paths["folder"].mkdir()
    result = run_cli(*(arg.format(**paths) for arg in args))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == f"medssr {args[0]}: error: {message.format(**paths)}", result.stderr
    assert "Traceback" not in result.stderr
    assert paths["file"].read_text() == "not a folder\n" and list(paths["folder"].iterdir()) == []


@pytest.mark.slow
def test_demo_answers_its_examples_with_a_given_model(tiny_model):
    result = run_cli("demo", "--model", str(tiny_model), "--max-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("--- model answer ---") == 3 and "[3/3] " in result.stdout
    assert result.stdout.count("--- extracted: strict=") == 3 and "gold=C" in result.stdout


@pytest.mark.slow
def test_demo_runs_the_pipeline_answers_with_this_runs_model_and_ends_with_the_summary(tmp_path):
    """`medssr demo --preset tiny` in a fresh folder (local sqlite store): the steps as one line each, the
    answers of this run's model named by what the gate made of it, and the summary last."""
    command = [str(CONSOLE_SCRIPT), "demo", "--preset", "tiny", "--max-tokens", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "  [6] evaluate ... success (" in out and "executor_input" not in out
    summary = out[out.index("=== medssr: pipeline run "):]
    assert out.index("--- model answer ---") < out.index("=== medssr: pipeline run ")  # the summary closes the output
    promoted = ": PROMOTED: " in summary
    assert promoted or ": REFUSED: " in summary
    role = "the champion" if promoted else "the candidate (the gate did not promote it)"
    assert f"=== this run's model, models:/medssr-tiny/1, {role}, answers ===" in out
    assert "pseudo-labels: " in summary and "registered: models:/medssr-tiny/1 (alias candidate)" in summary
    assert f"--backend-store-uri sqlite:///{tmp_path.resolve()}/.medssr/mlflow.db" in summary
    assert len(summary.splitlines()) <= 12


@pytest.mark.slow
def test_models_tiny_builds_a_loadable_model(tmp_path):
    result = run_cli("models", "tiny", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "tiny") and (tmp_path / "tiny" / "model.safetensors").is_file()


def test_a_bug_inside_a_command_shows_its_traceback_and_exits_1(tmp_path):
    """A KeyError from the code (not from anything the user gave) is a bug: its traceback, never one tidy line."""
    program = (
        "import sys\n"
        "import medssr.commands.models as models\n"
        "def broken(args):\n"
        "    return {}['missing_key']\n"
        "models._tiny = broken\n"
        "from medssr.cli import main\n"
        "sys.exit(main(['models', 'tiny', sys.argv[1]]))\n"
    )
    result = subprocess.run([sys.executable, "-c", program, str(tmp_path / "tiny")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "Traceback (most recent call last)" in result.stderr and "KeyError: 'missing_key'" in result.stderr
    assert "error: missing_key" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("synthesize", "--n", "5", "--rare-ratio", "2", "--out", "{tmp}/x.jsonl"), "medssr synthesize: error: rare_ratio: must be in [0, 1]"),
        (("deploy", "not a model", "--dry-run"), "medssr deploy: error: not a registered model reference"),
        (("train", "--stage", "self", "--model", "m", "--data", "d.jsonl", "--out", "{tmp}/o", "--launcher", "pytorchjob",
          "--dry-run", "--run-id", "Bad_Run!", "--image", "i"), "medssr train: error: run_id='Bad_Run!' is not a valid Kubernetes label value"),
    ],
)
def test_a_bad_option_value_is_one_line_exit_2(args, message, tmp_path):
    result = run_cli(*(arg.format(tmp=tmp_path) for arg in args))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_options_are_never_abbreviated(tmp_path):
    """`--benchmark X` once set `--benchmarks X` silently; every parser and subparser now refuses a prefix."""
    from medssr.cli import build_parser

    result = run_cli("evaluate", "--model", "m", "--out", str(tmp_path), "--benchmark", "somewhere")
    assert result.returncode == 2 and "unrecognized arguments: --benchmark somewhere" in result.stderr, result.stderr

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    found = list(parsers(build_parser()))
    assert len(found) > 15 and all(not p.allow_abbrev for p in found)
