"""Pipeline presets: YAML files of run parameters and stage mappings (``presets/*.yaml``: tiny, smol, paper),
plus ``study`` (``medssr study``'s settings at their defaults). Each is validated against the stage configs
by the same path as ``--param``, so a preset can only name settings that exist.

The local presets split the stage-2 data off one benchmark file by question id (``split.split_benchmark``):
its train part is stage 2's human-annotated data and the synthesis seed pool, and the run evaluates only
the rest. ``split.benchmarks_dir`` of a local run comes from MEDSSR_BENCHMARKS_DIR, else the shared folder
beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = (*sorted(p.stem for p in PRESET_DIR.glob("*.yaml")), "study")


def default_benchmarks_dir() -> str:
    configured = os.environ.get("MEDSSR_BENCHMARKS_DIR")
    if configured:
        return configured
    return str((REPO.parent / "shared" / "benchmarks" / "medssr-eval").resolve())


def local_defaults(root: Path | None = None) -> dict:
    """What every local run needs: the workspace under ``.medssr``, the benchmarks here, generation on CPU."""
    root = (root or Path.cwd()).resolve()
    return {
        "workspace": str(root / ".medssr" / "workspace"),
        "split": {"benchmarks_dir": default_benchmarks_dir()},
        "labeling": {"device": "cpu"},
        "evaluation": {"device": "cpu"},
    }


def preset_file(name: str) -> Path:
    return PRESET_DIR / f"{name}.yaml"


def study_preset() -> dict:
    """``medssr study``'s settings at its defaults (StudyConfig, their only declaration) as pipeline parameters:
    the pipeline then runs the study's medssr arm (base, stage 1, stage 2). Its one evaluation limit covers both
    benchmarks, so it evaluates the first max(split_eval_size, heldout_size) questions of each."""
    from medssr.study.config import StudyConfig

    study = StudyConfig()
    training = {"num_generations": study.num_generations, "per_device_train_batch_size": study.train_batch_size,
                "learning_rate": study.learning_rate, "beta": study.beta, "max_completion_length": study.max_completion_length,
                "temperature": study.train_temperature, "save_steps": study.save_steps, "seed": study.seed}
    generation = {"batch_size": study.generation_batch_size, "prompt_style": study.prompt_style}
    return {
        "base_model": study.base_model,
        "split": {"split_benchmark": study.split_benchmark, "train_size": study.stage2_size, "seed": study.seed},
        "synthesis": {"n": study.synth_n, "rare_ratio": study.rare_ratio, "options_per_item": study.options_per_item, "seed": study.seed},
        "labeling": {"n_samples": study.label_samples, "min_agreement": study.min_agreement, "max_agreement": study.max_agreement,
                     "min_parsed": study.min_parsed, "max_tokens": study.label_max_tokens, "recovery": study.label_recovery,
                     "seed": study.seed, **generation},
        "train_self": {**training, "max_steps": study.stage1_max_steps},
        "train_supervised": {**training, "max_steps": study.stage2_max_steps},
        "evaluation": {"benchmarks": [study.split_benchmark, "raredis_heldout"], "limit": max(study.split_eval_size, study.heldout_size),
                       "n": study.eval_samples, "max_tokens": study.eval_max_tokens, "heldout_size": study.heldout_size,
                       "seed": study.seed, "use_hub": False, "on_error": "skip", **generation},
        "registration": {"name": "medssr-study"},
        "promotion": {"metric": "with_recovery"},
    }


def preset_values(name: str) -> dict:
    """A preset's parameters as written (run parameters and ``{stage: {setting: value}}``), checked."""
    import yaml

    from medssr.stages import STAGES

    if name not in PRESETS:
        raise ValueError(f"preset: must be one of {', '.join(PRESETS)}, not {name!r}")
    values = study_preset() if name == "study" else yaml.safe_load(preset_file(name).read_text(encoding="utf-8")) or {}
    for stage, settings in values.items():
        if isinstance(settings, dict):
            if stage not in STAGES:
                raise ValueError(f"preset {name}: no stage {stage!r} (stages: {', '.join(STAGES)})")
            values[stage] = STAGES[stage].check(settings)  # unknown settings and bad values fail here, naming them
    return values


def preset_params(name: str, root: Path | None = None, local: bool = True) -> dict:
    """The preset over the local defaults (``local``), as overrides of the pipeline's defaults."""
    from medssr.pipelines.runner import merged

    return merged(local_defaults(root) if local else {}, preset_values(name))
