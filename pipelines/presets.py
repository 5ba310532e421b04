"""Parameter presets for local runs: ``tiny`` (seconds per stage, for tests) and ``smol`` (SmolLM2-135M demo).

Both split the stage-2 data off one benchmark file by question id (``split_benchmark``): its train part
is stage 2's human-annotated data and the synthesis seed pool, and the run evaluates only the rest, so
no evaluated question is ever trained on. ``benchmarks_dir`` comes from MEDSSR_BENCHMARKS_DIR, else the
shared folder beside the repository.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def default_benchmarks_dir() -> str:
    configured = os.environ.get("MEDSSR_BENCHMARKS_DIR")
    if configured:
        return configured
    return str((REPO.parent / "shared" / "benchmarks" / "medssr-eval").resolve())


def local_defaults(root: Path | None = None) -> dict:
    """What every local run needs: local launcher and generation on CPU, the workspace under ``.medssr``."""
    root = (root or Path.cwd()).resolve()
    return {
        "workspace": str(root / ".medssr" / "workspace"),
        "benchmarks_dir": default_benchmarks_dir(),
        "launcher": "local",
        "generation_backend": "transformers",
        "device": "cpu",
        "nproc_per_node": 1,
        "num_workers": 0,
        "gpus_per_node": 0,
        "use_vllm": False,
    }


PRESETS: dict[str, dict] = {
    # A random tiny Qwen2 built on the fly: exercises every step and the registry in about a minute.
    # A random model never writes "The answer is X", so its votes are single letters sampled under a
    # letter constraint (answer_letters); that is the labelling backend's constrained mode, not a shortcut.
    "tiny": {
        "base_model": "tiny",
        "split_benchmark": "medqa",
        "stage2_size": 8,
        "synth_n": 8,
        "rare_ratio": 0.5,
        "options_per_item": 4,
        "decontaminate": True,
        "label_samples": 4,
        "min_agreement": 0.0,
        "max_agreement": 1.0,
        "min_parsed": 2,
        "answer_letters": "ABCD",
        "generation_batch_size": 16,
        "stage1_max_steps": 2,
        "stage2_max_steps": 2,
        "num_generations": 2,
        "train_batch_size": 2,
        "learning_rate": 1e-4,
        "max_completion_length": 8,
        "save_steps": 2,
        "eval_benchmarks": "medqa,raredis_heldout",
        "eval_limit": 4,
        "eval_samples": 1,
        "eval_max_tokens": 8,
        "heldout_size": 4,
        "model_name": "medssr-tiny",
    },
    # SmolLM2-135M-Instruct (built once from the packaged GGUF): `make demo`. Sized so that nothing in it
    # depends on luck: SmolLM2 states a final answer in about a quarter of its samples, so labelling asks
    # the others again (recovery) and every sample votes; ~37 questions after dedup leave dozens of labels
    # whatever the machine's rounding. Rollouts get 96 tokens, as labelling does: at 48 SmolLM2 almost never
    # reaches "The answer is X", every reward was 0 and GRPO had no gradient. Evaluation has 40 + 40
    # questions x 4 samples at 64 tokens (the forced second pass reads what is not stated; evaluation
    # was 460 of 784 s at 96), and the gate reads the reference protocol's accuracy (forced recovery
    # counted), the number the paper reports. A cold run took 14.8 min with the venv on 2 cores.
    "smol": {
        "base_model": "smollm2",
        "split_benchmark": "medqa",
        "stage2_size": 32,
        "synth_n": 48,
        "rare_ratio": 0.5,
        "options_per_item": 4,
        "decontaminate": True,
        "label_samples": 4,
        "min_agreement": 0.5,
        "max_agreement": 1.0,
        "min_parsed": 2,
        "label_max_tokens": 96,
        "label_recovery": True,
        "generation_batch_size": 64,
        "stage1_max_steps": 6,
        "stage2_max_steps": 6,
        "num_generations": 4,
        "train_batch_size": 4,
        "learning_rate": 1e-5,
        "max_completion_length": 96,
        "save_steps": 3,
        "eval_benchmarks": "medqa,raredis_heldout",
        "eval_limit": 40,
        "eval_samples": 4,
        "eval_max_tokens": 64,
        "heldout_size": 40,
        "gate_metric": "with_recovery",
        "model_name": "medssr-smol",
    },
}


def study_preset() -> dict:
    """``medssr study``'s settings at its defaults (StudyConfig, their only declaration) as pipeline parameters:
    the pipeline then runs the study's medssr arm (base, stage 1, stage 2). Its one evaluation limit covers both
    benchmarks, so it evaluates the first max(split_eval_size, heldout_size) questions of each: the study's own
    questions and, for the split benchmark, a few more."""
    from medssr.study.config import StudyConfig

    study = StudyConfig()
    same = ("base_model", "split_benchmark", "stage2_size", "synth_n", "rare_ratio", "options_per_item", "label_samples",
            "min_agreement", "max_agreement", "min_parsed", "label_max_tokens", "label_recovery", "generation_batch_size",
            "stage1_max_steps", "stage2_max_steps", "num_generations", "train_batch_size", "learning_rate", "beta",
            "max_completion_length", "train_temperature", "save_steps", "eval_samples", "eval_max_tokens", "heldout_size",
            "prompt_style", "seed")
    return {
        **{name: getattr(study, name) for name in same},
        "decontaminate": True,
        "eval_benchmarks": f"{study.split_benchmark},raredis_heldout",
        "eval_limit": max(study.split_eval_size, study.heldout_size),
        "gate_metric": "with_recovery",
        "model_name": "medssr-study",
    }


PRESETS["study"] = study_preset()


def preset_params(name: str, root: Path | None = None) -> dict:
    if name not in PRESETS:
        raise ValueError(f"preset: must be one of {', '.join(PRESETS)}, not {name!r}")
    return {**local_defaults(root), **PRESETS[name]}
