"""Pipeline presets: YAML files of run parameters and stage mappings (``presets/*.yaml``: tiny, smol, study,
paper; ``medssr study`` reads the same files). Each is validated against the stage configs
by the same path as ``--param``, so a preset can only name settings that exist.

The local presets split the stage-2 data off one benchmark file by question id (``split.split_benchmark``):
its train part is stage 2's human-annotated data and the synthesis seed pool, and the run evaluates only
the rest. ``split.benchmarks_dir`` of a local run is the benchmarks location (``medssr.locations``:
MEDSSR_BENCHMARKS_DIR, else pyproject.toml's [tool.medssr]); empty when neither is set, and the split says so.
"""

from __future__ import annotations

from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))


def default_benchmarks_dir() -> str:
    from medssr.locations import benchmarks_dir

    return str(benchmarks_dir(required=False) or "")


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


def preset_values(name: str) -> dict:
    """A preset's parameters as written (run parameters and ``{stage: {setting: value}}``), checked. ``name`` is a
    preset's name or the path of a YAML file of the same form."""
    import yaml

    from medssr.stages import STAGES

    if name in PRESETS:
        path = preset_file(name)
    elif name.endswith((".yaml", ".yml")) and Path(name).is_file():
        path = Path(name)
    else:
        raise ValueError(f"preset: must be one of {', '.join(PRESETS)} or a YAML file, not {name!r}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"preset {name}: expected a mapping of run parameters and stage sections")
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
