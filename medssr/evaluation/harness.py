"""The evaluation harness: models x benchmarks under the paper's protocol, cached, reported.

For each model, the questions of every benchmark are sampled ``n`` times in one batched generation
(cached by model identity, settings and prompt); each completion is read with the strict and lenient
filter pipelines, and the samples strict extraction cannot read get a second turn constrained to the
question's own letters (one greedy token; the transformers backend asks it on the finished sample's
own key/value cache). Accuracy never includes that second pass; its share (recovery rate) and the
reference protocol's number that does count it are reported beside.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

from medssr.data import EvalResult, MCQItem, write_jsonl
from medssr.evaluation.calibration import CalibrationConfig, calibration_of_records
from medssr.evaluation.cache import CompletionCache, default_cache_root, digest, keyed_prompts, model_identity, run_key
from medssr.evaluation.filters import PIPELINES
from medssr.evaluation.per_question import paired_deltas, rows_from, write_rows
from medssr.evaluation.registry import BENCHMARKS, BenchmarkUnavailable, load_benchmark, resolve_names
from medssr.evaluation.report import macro_average, write_report
from medssr.evaluation.scoring import score
from medssr.evaluation.recovery import LazyGenerator, sample_answers
from medssr.generation.base import Generator, GeneratorConfig, Prompt, SamplingParams
from medssr.prompt_limit import PromptLimit
from medssr.prompts import build_prompt


@dataclass
class EvaluationConfig:
    """Which models on which benchmarks, under which protocol (defaults: the paper's)."""

    models: list[str] = field(default_factory=list, metadata={"help": "Model refs: folders, hub ids, s3:// URIs."})
    model_names: list[str] = field(default_factory=list, metadata={"help": "Display names (e.g. base, stage1, stage2); default: folder names."})
    benchmarks_dir: str = field(default="", metadata={"help": "Folder with benchmark files in the reference format."})
    benchmarks: list[str] = field(default_factory=lambda: ["all"], metadata={"help": "Benchmark names, or 'all' available."})
    limit: int | None = field(default=None, metadata={"help": "First K questions of each benchmark (None: all)."})
    n: int = field(default=4, metadata={"help": "Samples per question; accuracy is mean +- std over them."})
    sampling: SamplingParams = field(default_factory=SamplingParams, metadata={"help": "Paper protocol: T 0.6, top_p 0.95, top_k 20, 2048 tokens."})
    prompt_style: Literal["chat", "text"] = field(
        default="chat",
        metadata={"help": "chat messages (instruct/chat-template models) or plain text (base models)."},
    )
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "Backend settings (its model is set per model)."})
    chunk_size: int = field(default=256, metadata={"help": "Questions per generation call, all benchmarks together (continuously batched; cache checkpoint)."})
    recovery: bool = field(default=True, metadata={"help": "Second, letter-constrained pass for unreadable samples."})
    cache_dir: str = field(default="", metadata={"help": "Completions cache; default ~/.cache/medssr/completions."})
    out_dir: str = field(default="eval-out", metadata={"help": "Report folder: results.{json,md,png} and samples/."})
    bootstrap_samples: int = field(default=1000, metadata={"help": "Bootstrap resamples for the 95% intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap, the held-out set and (unless sampling.seed) sampling."})
    use_hub: bool = field(default=True, metadata={"help": "Load benchmarks without a local file from the Hugging Face hub."})
    heldout_size: int = field(default=200, metadata={"help": "Questions in the held-out rare-disease set."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "Bad benchmark records: stop, or skip and count."})
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig, metadata={"help": "Agreement buckets of the report's calibration section."})

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("n must be >= 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be >= 1")
        if self.prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style must be 'chat' or 'text', not {self.prompt_style!r}")
        if self.model_names and len(self.model_names) != len(self.models):
            raise ValueError("model_names must name every model (or none)")


@dataclass
class EvaluationResult:
    """``summary[model][benchmark]`` scores, benchmarks skipped with their reasons, and file paths.
    ``report["paired"]["<model>_vs_<first model>"][benchmark][metric]`` holds the paired differences."""

    summary: dict[str, dict[str, dict]]
    skipped: dict[str, str]
    paths: dict[str, str]
    report: dict

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow: ``eval/<model>/<benchmark>/<metric>``."""
        flat = {}
        for label, scores in self.summary.items():
            for bench, s in scores.items():
                for metric in ("strict", "lenient", "with_recovery"):
                    flat[f"eval/{label}/{bench}/{metric}_acc"] = s[metric]["mean"]
                flat[f"eval/{label}/{bench}/recovery_rate"] = s["recovery_rate"]
            for metric, value in macro_average(scores).items():
                flat[f"eval/{label}/average/{metric}"] = value
        return {k: float(v) for k, v in flat.items()}


def protocol_digest(config: EvaluationConfig, sampling: SamplingParams) -> str:
    """What makes two models' per-question results comparable: samples, sampling, prompt style, recovery."""
    return digest({"n": config.n, "sampling": dataclasses.asdict(sampling), "prompt_style": config.prompt_style, "recovery": config.recovery})[:16]


def model_labels(config: EvaluationConfig) -> list[str]:
    if config.model_names:
        labels = list(config.model_names)
    else:
        labels = [Path(ref.rstrip("/")).name or ref for ref in config.models]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return unique


def evaluate_model(
    loaded: Mapping[str, list[MCQItem]],
    label: str,
    cache: CompletionCache,
    generator: LazyGenerator,
    config: EvaluationConfig,
    sampling: SamplingParams,
) -> tuple[dict[str, tuple[dict, list[EvalResult]]], dict]:
    """Scores and per-sample records of one model on every loaded benchmark, and its generation timing.

    The questions of all benchmarks go to the generator together (one continuous batch; the
    constrained second pass rides along), so a slow benchmark tail is paid once per model, not once
    per benchmark."""
    prompts_of = {name: keyed_prompts(build_prompt(item, config.prompt_style) for item in items) for name, items in loaded.items()}
    prompts: dict[str, Prompt] = {}
    items_by_key: dict[str, MCQItem] = {}
    for name, items in loaded.items():
        prompts.update(prompts_of[name][0])
        items_by_key.update(zip(prompts_of[name][1], items))
    started = time.perf_counter()
    sampled = sample_answers(
        cache, generator, prompts, items_by_key, config.n, sampling, config.chunk_size, PIPELINES["strict"], config.recovery, desc=label
    )
    generation_s = time.perf_counter() - started
    completions, strict, missing = sampled.completions, sampled.read, sampled.generated
    timing = {
        "generated_questions": len(missing),
        "generation_s": round(generation_s, 3),
        "questions_per_s": round(len(missing) / generation_s, 4) if missing and generation_s > 0 else None,
    }
    results = {}
    for name, items in loaded.items():
        keys = prompts_of[name][1]
        lenient = [[PIPELINES["lenient"](text, item) for text in completions[key]] for item, key in zip(items, keys)]
        recovered = [sampled.recovered[key] for key in keys]
        scores = score([item.answer for item in items], [strict[key] for key in keys], lenient, recovered, config.bootstrap_samples, config.seed)
        scores["content_sha256"] = digest([item.model_dump(mode="json") for item in items])
        scores["generated_questions"] = len(missing & set(keys))
        records = [
            EvalResult(
                model=label,
                benchmark=name,
                item_id=item.id,
                sample=s,
                completion=completions[key][s],
                answer=item.answer,
                strict=strict[key][s],
                lenient=lenient[i][s],
                recovered=recovered[i][s],
                correct_strict=strict[key][s] == item.answer,
                correct_lenient=lenient[i][s] == item.answer,
            )
            for i, (item, key) in enumerate(zip(items, keys))
            for s in range(config.n)
        ]
        results[name] = (scores, records)
    return results, timing


def run_evaluation(config: EvaluationConfig, generators: Mapping[str, Generator] | None = None) -> EvaluationResult:
    """Evaluate every model on every available benchmark; write results.{json,md,png} and per-sample JSONL.

    ``generators`` (model ref -> loaded generator) lets a caller reuse a loaded model; otherwise each
    model's backend is built from ``config.generator`` when something is not cached.
    """
    if not config.models:
        raise ValueError("models: give at least one model")
    names = resolve_names(config.benchmarks)
    # Prompts are bounded in tokens of the first model's tokenizer (the models compared share one).
    prompt_limit = PromptLimit.for_generator(dataclasses.replace(config.generator, model=config.models[0]))
    loaded: dict[str, list[MCQItem]] = {}
    skipped: dict[str, str] = {}
    origins: dict[str, dict] = {}
    for name in names:
        try:
            bench = load_benchmark(
                name, config.benchmarks_dir or None, config.limit, config.on_error, config.use_hub, config.heldout_size, config.seed,
                prompt_limit=prompt_limit, prompt_of=lambda item: build_prompt(item, config.prompt_style),
            )
        except BenchmarkUnavailable as exc:
            skipped[name] = str(exc)
            continue
        if not bench.items:
            skipped[name] = f"no questions in {bench.origin}"
            continue
        loaded[name] = bench.items
        origins[name] = {"origin": bench.origin, "rejected_records": bench.rejected}

    sampling = config.sampling if config.sampling.seed is not None else dataclasses.replace(config.sampling, seed=config.seed)
    out = Path(config.out_dir)
    summary: dict[str, dict[str, dict]] = {}
    identities = {}
    timings: dict[str, dict] = {}
    per_question: dict[str, list[dict]] = {}
    calibration: dict[str, dict[str, dict]] = {}
    for ref, label in zip(config.models, model_labels(config)):
        generator_config = dataclasses.replace(config.generator, model=ref)
        identity = model_identity(generator_config)
        identities[label] = {k: v for k, v in identity.items() if k != "files"} | {"fingerprint": digest(identity)}
        cache = CompletionCache(
            config.cache_dir or default_cache_root(),
            run_key(identity, generator_config, sampling, config.n, "evaluate:" + config.prompt_style),
        )
        generator = LazyGenerator(generator_config, (generators or {}).get(ref))
        summary[label] = {}
        results, timings[label] = evaluate_model(loaded, label, cache, generator, config, sampling)
        per_question[label] = []
        for name, (scores, records) in results.items():
            scores.update(origins[name])
            summary[label][name] = scores
            write_jsonl(out / "samples" / label / f"{name}.jsonl", records)
            per_question[label] += rows_from(records)
        calibration.update(calibration_of_records([r for _, records in results.values() for r in records], config.calibration,
                                                  bootstrap_samples=config.bootstrap_samples, seed=config.seed))
        write_rows(out / "per_question" / f"{label}.jsonl", per_question[label])
        del generator
        gc.collect()

    labels = list(per_question)
    paired = {
        f"{label}_vs_{labels[0]}": paired_deltas(per_question[label], per_question[labels[0]], config.bootstrap_samples, config.seed)
        for label in labels[1:]
    }
    report = {
        "summary": summary,
        "paired": paired,
        "calibration": calibration,
        "skipped": skipped,
        "models": identities,
        "timing": timings,
        "settings": {
            "n": config.n,
            "sampling": dataclasses.asdict(sampling),
            "prompt_style": config.prompt_style,
            "limit": config.limit,
            "recovery": config.recovery,
            "bootstrap_samples": config.bootstrap_samples,
            "seed": config.seed,
            "benchmarks_dir": config.benchmarks_dir,
            "rare_benchmarks": [name for name in loaded if BENCHMARKS[name].rare],
        },
        "protocol": protocol_digest(config, sampling),
        "per_question": {label: str(out / "per_question" / f"{label}.jsonl") for label in per_question},
    }
    paths = write_report(report, out)
    paths.update({f"per_question/{label}": path for label, path in report["per_question"].items()})
    return EvaluationResult(summary, skipped, paths, report)
