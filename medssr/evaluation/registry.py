"""The benchmarks, as data: where each one comes from and how its fields map onto an MCQ item.

Every benchmark loads from a local file in the MedSSR reference format (a JSON list of ``{id,
question, gold, name}``, options as "A. ..." lines at the end of the question) when
``BENCHMARKS_DIR/<filename>`` exists; otherwise from its Hugging Face dataset where one is known and
the hub is reachable; otherwise it is reported as skipped with the reason. ``raredis_heldout`` is
built from knowledge-base diseases that synthesis never trains on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from medssr.data import LETTERS, MCQItem, ReadResult, RecordError, parse_question_text, read_reference_benchmark
from medssr.generation.base import Prompt
from medssr.prompt_limit import PromptLimit
from medssr.prompts import build_messages


class BenchmarkUnavailable(Exception):
    """A benchmark that cannot be loaded here (no local file, no hub): skipped, with this reason."""


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset and how its rows map onto MCQ items."""

    dataset: str
    split: str
    configs: tuple[str | None, ...] = (None,)
    question: str = "question"
    options: str | tuple[str, ...] | None = "options"
    """A column holding a list or a {letter: text} dict; a tuple of columns, one per option; None when
    the options are "A. ..." lines inside the question (the reference format)."""
    answer: str = "answer"
    answer_kind: Literal["letter", "index", "text"] = "letter"
    fixed_options: tuple[str, ...] = ()
    """Options shared by every row (PubMedQA's yes/no/maybe); the answer is then one of these texts."""
    id_field: str | None = None
    cut_question_at: str | None = None
    """Drop the question text from this marker on (e.g. options repeated inside the question)."""


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    title: str
    filename: str | None
    hub: HubSource | None = None
    rare: bool = False
    builder: str | None = None
    """``module:function(n, seed) -> list[MCQItem]`` for benchmarks built by code (the held-out set)."""
    notes: str = ""
    in_all: bool = True
    """False for a set only a study writes (raredis_seen): evaluated when named, not under ``all``."""


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec(
            "medqa", "MedQA (USMLE, 4 options)", "test_short_medqa.json",
            HubSource("GBaker/MedQA-USMLE-4-options", "test", answer="answer_idx"),
        ),
        BenchmarkSpec(
            "medmcqa", "MedMCQA", "test_short_medmcqa.json",
            HubSource("openlifescienceai/medmcqa", "validation", options=("opa", "opb", "opc", "opd"), answer="cop", answer_kind="index", id_field="id"),
        ),
        BenchmarkSpec(
            "pubmedqa", "PubMedQA", "test_short_pubmedqa.json",
            HubSource("qiaojin/PubMedQA", "train", configs=("pqa_labeled",), options=None, answer="final_decision",
                      answer_kind="text", fixed_options=("yes", "no", "maybe"), id_field="pubid"),
        ),
        BenchmarkSpec(
            "mmlu", "MMLU (medical subsets)", "test_short_mmlu.json",
            HubSource("cais/mmlu", "test", configs=("anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                                                    "medical_genetics", "professional_medicine"),
                      options="choices", answer="answer", answer_kind="index"),
        ),
        BenchmarkSpec("bioasq", "BioASQ (yes/no)", "test_short_bioasq.json", notes="reference file only"),
        BenchmarkSpec("lancet", "Lancet clinical cases", "test_short_lancet.json", notes="reference file only"),
        BenchmarkSpec("medbullets", "MedBullets", "test_short_medbullets.json", notes="reference file only"),
        BenchmarkSpec("nejm", "NEJM image challenge (text)", "test_short_nejm.json", notes="reference file only"),
        BenchmarkSpec(
            "medxpertqa", "MedXpertQA (Text)", "test_short_medxpertqa.json",
            HubSource("TsinghuaC3I/MedXpertQA", "test", configs=("Text",), answer="label", id_field="id",
                      cut_question_at="Answer Choices:"),
        ),
        BenchmarkSpec(
            "raredis_sub", "RareDis-Sub (paper's rare-disease subset)", "test_short_raredis_sub.json",
            # The dataset card documents no schema; it is the paper's own release, so we read it in the
            # paper's reference format (options inside the question, "gold" letter).
            HubSource("tdlhl/RareDis-Sub", "test", options=None, answer="gold", id_field="id"),
            rare=True,
        ),
        BenchmarkSpec(
            "raredis_heldout", "Held-out rare diseases (ours)", None, rare=True,
            builder="medssr.synthesis.heldout:build_heldout_benchmark",
            notes="questions about knowledge-base diseases that synthesis never trains on",
        ),
        BenchmarkSpec(
            "raredis_seen", "In-distribution rare diseases (ours)", "test_short_raredis_seen.json", rare=True,
            notes="new questions about the conditions a study's stage 1 trained on; `medssr study` writes the file",
            in_all=False,
        ),
    )
}


def resolve_names(requested: list[str] | tuple[str, ...]) -> list[str]:
    """Benchmark names in registry order; ``all`` (or nothing) means every registered benchmark."""
    if not requested or "all" in requested:
        return [name for name, spec in BENCHMARKS.items() if spec.in_all]
    unknown = [name for name in requested if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"benchmarks: unknown {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    return [name for name in BENCHMARKS if name in requested]


def _hub_rows(source: HubSource, limit: int | None) -> list[tuple[str | None, dict]]:
    import datasets

    rows: list[tuple[str | None, dict]] = []
    for config in source.configs:
        split = source.split if limit is None else f"{source.split}[:{limit}]"
        for row in datasets.load_dataset(source.dataset, config, split=split):
            rows.append((config, row))
            if limit is not None and len(rows) >= limit:
                return rows
    return rows


def item_from_hub_row(row: dict[str, Any], source: HubSource, benchmark: str, index: int) -> MCQItem:
    """One hub row as an MCQ item, following the source's field mapping."""
    question = str(row[source.question])
    if source.cut_question_at and source.cut_question_at in question:
        question = question.split(source.cut_question_at)[0].rstrip()
    if source.fixed_options:
        texts = list(source.fixed_options)
        options = dict(zip(LETTERS, texts))
        stem = question
    elif source.options is None:
        stem, options = parse_question_text(question)
        texts = list(options.values())
    elif isinstance(source.options, tuple):
        texts = [str(row[column]) for column in source.options]
        options, stem = dict(zip(LETTERS, texts)), question
    else:
        raw = row[source.options]
        if isinstance(raw, dict):
            options = {str(k).strip().upper(): str(v) for k, v in raw.items() if v is not None and str(v).strip()}
        else:
            options = dict(zip(LETTERS, map(str, raw)))
        texts, stem = list(options.values()), question
    raw_answer = row[source.answer]
    if source.answer_kind == "index":
        answer = LETTERS[int(raw_answer)]
    elif source.answer_kind == "text":
        lowered = [t.strip().lower() for t in texts]
        answer = LETTERS[lowered.index(str(raw_answer).strip().lower())]
    else:
        answer = str(raw_answer).strip().upper()
    item_id = str(row[source.id_field]) if source.id_field and source.id_field in row else f"{benchmark}-{index:06d}"
    return MCQItem(id=item_id, stem=stem, options=options, answer=answer, source=benchmark)


def _build(spec: BenchmarkSpec, limit: int | None, heldout_size: int, seed: int) -> list[MCQItem]:
    import importlib

    module_name, _, function_name = spec.builder.partition(":")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise BenchmarkUnavailable(f"its builder {spec.builder} is not available ({exc})") from None
    # Always the full set, then the first ``limit``: a smaller limit is a prefix of the same benchmark.
    items = list(builder(heldout_size, seed))
    return items[:limit] if limit is not None else items


@dataclass
class LoadedBenchmark:
    items: list[MCQItem]
    origin: str
    rejected: int = 0


def load_benchmark(
    name: str,
    benchmarks_dir: str | Path | None,
    limit: int | None = None,
    on_error: Literal["raise", "skip"] = "raise",
    use_hub: bool = True,
    heldout_size: int = 200,
    seed: int = 0,
    prompt_limit: PromptLimit | None = None,
    prompt_of: Callable[[MCQItem], Prompt] = build_messages,
) -> LoadedBenchmark:
    """The benchmark's items (the first ``limit``), where they came from and how many records were
    rejected (``on_error="skip"``); raises BenchmarkUnavailable. With ``prompt_limit``, a question whose
    prompt (``prompt_of(item)``) is over it is rejected too, named by file and position."""
    spec = BENCHMARKS[name]
    if spec.builder:
        return LoadedBenchmark(_build(spec, limit, heldout_size, seed), spec.builder)
    reasons = []
    if spec.filename and benchmarks_dir:
        path = Path(benchmarks_dir) / spec.filename
        if path.is_file():
            read = read_reference_benchmark(path, on_error=on_error)
            if prompt_limit is not None:
                read = _within(prompt_limit, read, str(path), prompt_of, on_error)
            items = read.records[:limit] if limit is not None else read.records
            return LoadedBenchmark(items, str(path), read.rejected)
        reasons.append(f"no file {path}")
    elif spec.filename:
        reasons.append("no benchmarks directory given")
    if spec.hub is None:
        raise BenchmarkUnavailable("; ".join(reasons + ["no Hugging Face source is known"]))
    if not use_hub:
        raise BenchmarkUnavailable("; ".join(reasons + [f"hub loading is off ({spec.hub.dataset})"]))
    try:
        rows = _hub_rows(spec.hub, limit)
    except Exception as exc:  # offline, gated, renamed: all mean "not here"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchmarkUnavailable("; ".join(reasons + [f"hub dataset {spec.hub.dataset} not loadable ({message[:200]})"])) from None
    read = ReadResult(records=[])
    for index, (_, row) in enumerate(rows):
        try:
            read.records.append(item_from_hub_row(row, spec.hub, name, index))
            read.lines.append(index + 1)
        except (KeyError, ValueError, IndexError, RecordError) as exc:
            error = RecordError(spec.hub.dataset, index + 1, "record", f"cannot map the row: {exc}")
            if on_error == "raise":
                raise error from None
            read.errors.append(error)
    if prompt_limit is not None:
        read = _within(prompt_limit, read, spec.hub.dataset, prompt_of, on_error)
    return LoadedBenchmark(read.records, f"hf://{spec.hub.dataset}", read.rejected)


def _within(prompt_limit: PromptLimit, read: ReadResult, origin: str, prompt_of, on_error: str) -> ReadResult:
    checked = prompt_limit.reject_long(read, origin, prompt_of)
    if on_error == "raise" and checked.errors:
        raise checked.errors[0]
    return checked
