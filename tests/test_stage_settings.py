"""One declaration per setting: every field of every stage config is a pipeline parameter (the stage's
mapping, with the config's default) and an option of the stage's command; a command's `--config` reads
its stage's section of a preset, and a preset's labelling is the same through the pipeline step and
through `medssr label --config`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from medssr import configs
from medssr.stages import STAGES

# Each stage's command, with the arguments it cannot run without.
COMMANDS = {
    "labeling": ["label"], "train_self": ["train"], "train_supervised": ["train"], "training_job": ["train"],
    "synthesis": ["synthesize", "--out", "items.jsonl", "--seed-questions", "seeds.jsonl"],
    "evaluation": ["evaluate", "--model", "base"], "promotion": ["promote", "medssr"], "deployment": ["deploy", "medssr"],
}
PRESETS = Path(__file__).resolve().parent.parent / "pipelines" / "presets"


def test_every_stage_setting_is_a_pipeline_parameter_with_the_config_default(tmp_path):
    from medssr.pipelines.runner import compile_pipeline, pipeline_defaults

    spec, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text())
    compiled = spec["root"]["inputDefinitions"]["parameters"]
    signature = pipeline_defaults()
    for name, stage in STAGES.items():
        settings = {s.name for s in stage.settings()}
        wired = {s.name for s in configs.settings_of(stage.config, stage.prefixes) if s.name in stage.wired or s.path[0] in stage.wired}
        assert settings | wired == {s.name for s in configs.settings_of(stage.config, stage.prefixes)}, name
        defaults = {k: v for k, v in stage.defaults().items() if v is not None}  # KFP has no null: unset = the default
        assert compiled[name]["parameterType"] == "STRUCT" and compiled[name]["defaultValue"] == defaults, name
        assert signature[name] == defaults, name
        assert set(stage.defaults()) == settings


@pytest.mark.parametrize("stage_name", sorted(COMMANDS))
def test_every_stage_setting_is_an_option_of_its_command_with_the_same_default(stage_name):
    from medssr.cli import build_parser

    stage = STAGES[stage_name]
    parser = build_parser()
    command = parser._subparsers._group_actions[0].choices[COMMANDS[stage_name][0]]
    options = {opt for action in command._actions for opt in action.option_strings}
    for setting in stage.settings():
        assert f"--{setting.name.replace('_', '-')}" in options, (stage_name, setting.name)
    args = parser.parse_args(COMMANDS[stage_name])
    given = {s.name: getattr(args, s.name) for s in configs.settings_of(stage.config, stage.prefixes) if getattr(args, s.name, None) is not None}
    from_cli = configs.flat_values(configs.from_args(stage.config, args, stage.prefixes), stage.prefixes)
    from_pipeline = configs.flat_values(stage.build(stage.defaults(), **given), stage.prefixes)
    assert {k: from_cli[k] for k in stage.defaults()} == {k: from_pipeline[k] for k in stage.defaults()}


def test_a_converted_command_reads_its_section_of_a_preset_and_its_options_override_it():
    from medssr.cli import build_parser

    stage = STAGES["evaluation"]
    args = build_parser().parse_args(["evaluate", "--config", str(PRESETS / "tiny.yaml"), "--model", "m", "--limit", "2", "--no-recovery"])
    config = configs.from_args(stage.config, args, stage.prefixes, section=stage.name)
    preset = yaml.safe_load((PRESETS / "tiny.yaml").read_text())["evaluation"]
    assert config.benchmarks == preset["benchmarks"] and config.sampling.max_tokens == preset["max_tokens"] and not config.use_hub
    assert (config.models, config.limit, config.recovery) == (["m"], 2, False)


def test_a_boolean_option_alone_is_true_and_its_no_form_false():
    from medssr.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["promote", "medssr", "--dry-run"]).dry_run is True
    assert parser.parse_args(["promote", "medssr", "--dry-run", "false"]).dry_run is False
    assert parser.parse_args(["deploy", "m", "--no-wait"]).wait is False
    assert parser.parse_args(["evaluate", "--model", "m", "--no-hub"]).use_hub is False
    with pytest.raises(SystemExit):
        parser.parse_args(["promote", "medssr", "--dry-run", "maybe"])


def test_a_pipeline_override_is_typed_by_the_config_field():
    from medssr.pipelines.runner import parse_overrides, pipeline_defaults

    defaults = pipeline_defaults()
    parsed = parse_overrides(["labeling.max_tokens=96", "synthesis.rare_ratio=0.25", "evaluation.benchmarks=medqa,nejm",
                              "labeling.allowed_letters=A,B", "deploy_model=true", "base_model=x"], defaults)
    assert parsed == {"labeling": {"max_tokens": 96, "allowed_letters": ("A", "B")}, "synthesis": {"rare_ratio": 0.25},
                      "evaluation": {"benchmarks": ["medqa", "nejm"]}, "deploy_model": True, "base_model": "x"}
    with pytest.raises(ValueError, match="no such pipeline parameter"):
        parse_overrides(["labeling.max_tokenz=1"], defaults)
    with pytest.raises(ValueError, match="labeling.max_tokens: 'many' is not a valid int"):
        parse_overrides(["labeling.max_tokens=many"], defaults)
    with pytest.raises(ValueError, match="no such pipeline parameter"):
        parse_overrides(["labeling=1"], defaults)


class LocalArtifact:
    """A KFP output artifact as a step sees it: a local path, metadata, and metrics."""

    def __init__(self, path: Path):
        self.path, self.metadata, self.metrics = str(path), {}, {}

    def log_metric(self, key: str, value: float) -> None:
        self.metrics[key] = value


@pytest.mark.slow
def test_the_tiny_presets_labelling_is_the_same_through_medssr_label(tiny_model, tmp_path, monkeypatch, mlflow_empty_db):
    from medssr.cli import main
    from medssr.components.steps import open_pipeline_run, run_stage
    from medssr.data import MCQItem, write_jsonl
    from medssr.pipelines.presets import preset_params
    from medssr.pipelines.runner import resolved_params

    monkeypatch.setenv("MEDSSR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copyfile(mlflow_empty_db, tmp_path / "mlflow.db")
    items = tmp_path / "items.jsonl"
    write_jsonl(items, [MCQItem(id=f"q{i}", stem=f"Question {i}: which finding fits?", answer="ABCD"[i % 4],
                                options={"A": "gene", "B": "onset", "C": "childhood", "D": "adult"}) for i in range(6)])
    params = resolved_params(preset_params("tiny", tmp_path))
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = open_pipeline_run(params["run_id"], "", tracking, "medssr", params["pipeline_params"])
    run = {**ids, "tracking_uri": tracking, "experiment": "medssr", "workspace": str(tmp_path / "workspace")}
    outputs = {name: LocalArtifact(tmp_path / name) for name in ("labeled", "audit", "metrics")}
    run_stage("pseudo_label", "labeling", run, params["labeling"], {"items": str(items), "base_model": str(tiny_model)}, outputs)

    out = tmp_path / "cli" / "labeled.jsonl"
    monkeypatch.setenv("MEDSSR_CACHE", str(tmp_path / "other-cache"))  # computed again, not read from the step's cache
    assert main(["label", "--config", str(PRESETS / "tiny.yaml"), "--model", str(tiny_model), "--data", str(items), "--out", str(out)]) == 0
    assert out.read_text() == Path(outputs["labeled"].path).read_text() and out.read_text()
    assert outputs["metrics"].metrics["items"] == 6.0 and json.loads(out.read_text().splitlines()[0])["n_samples"] == 4
    assert list((tmp_path / "other-cache" / "completions").rglob("completions.jsonl"))


# The commands whose settings are one typed config of their own (not a pipeline stage), with what they cannot run without.
OWN_CONFIGS = {
    "serve": ("medssr.serving.config:ServeConfig", ["serve", "--local", "m"]),
    "ask": ("medssr.ask:AskConfig", ["ask", "--url", "http://127.0.0.1:1", "q"]),
    "calibration": ("medssr.evaluation.calibration:CalibrationConfig", ["calibration", "folder"]),
    "demo": ("medssr.commands.demo:DemoConfig", ["demo"]),
    "study": ("medssr.study.config:StudyConfig", ["study"]),
}


@pytest.mark.parametrize("name", sorted(OWN_CONFIGS))
def test_every_command_takes_each_field_of_its_config_and_a_config_file(name, tmp_path):
    import importlib

    from medssr.cli import build_parser

    module, _, cls_name = OWN_CONFIGS[name][0].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    parser = build_parser()
    command = parser._subparsers._group_actions[0].choices[name]
    options = {opt for action in command._actions for opt in action.option_strings}
    positional = {action.dest for action in command._actions if not action.option_strings}
    assert "--config" in options
    for setting in configs.settings_of(cls):
        if setting.name != "command":  # the study's record of its own command line
            assert f"--{setting.name.replace('_', '-')}" in options or setting.name in positional, (name, setting.name)
    # nothing given: the config's defaults; a --config file sets a field and an option given overrides it
    args = parser.parse_args(OWN_CONFIGS[name][1])
    built = configs.from_args(cls, args)
    numeric = next(s for s in configs.settings_of(cls) if s.annotation is int)  # its first whole-number setting
    assert getattr(built, numeric.name) == numeric.default
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({numeric.name: numeric.default + 3}))
    args = parser.parse_args([*OWN_CONFIGS[name][1], "--config", str(settings_file)])
    assert getattr(configs.from_args(cls, args), numeric.name) == numeric.default + 3
    args = parser.parse_args([*OWN_CONFIGS[name][1], "--config", str(settings_file), f"--{numeric.name.replace('_', '-')}", str(numeric.default + 5)])
    assert getattr(configs.from_args(cls, args), numeric.name) == numeric.default + 5
