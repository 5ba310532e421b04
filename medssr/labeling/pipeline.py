"""Stage-1 pseudo-labels from the policy's own self-consistency.

For each question the policy samples ``n_samples`` answers (batched, through any generation
backend); each answer is read in lenient mode, which is strict extraction with lenient fallback
(a strict "The answer is X" statement always decides; boxed letters, "Answer: X", option text etc.
count only where there is no statement), so a sample that answered in another format still votes.
A sample that states no answer at all gets the evaluation harness's second, letter-constrained turn
(``recovery``, :mod:`medssr.evaluation.recovery`): small models reason but seldom conclude, and
without it most of their votes would be lost. Free-form and recovered votes are recorded apart; the
majority over both gives the label and its agreement; ties and votes with too few answers are
dropped, and only ``min_agreement <= agreement <= max_agreement`` is kept. Completions are cached by
model, settings and prompt, so an interrupted run resumes and a rerun with other bounds is free.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from medssr.answers import Mode, majority_vote
from medssr.data import LabeledItem, MCQItem, read_jsonl, write_jsonl
from medssr.evaluation.cache import CompletionCache, default_cache_root, keyed_prompts, model_identity, run_key
from medssr.evaluation.filters import PIPELINES
from medssr.evaluation.recovery import LazyGenerator, sample_answers
from medssr.generation.base import Generator, GeneratorConfig, SamplingParams
from medssr.labeling.audit import DEFAULT_BUCKET_EDGES, Outcome, audit, kb_key, write_audit
from medssr.labeling.selection import DROP_REASONS, SelectionRule
from medssr.prompt_limit import PromptLimit
from medssr.prompts import build_prompt

# Labelling samples like GRPO rollouts do (TRL's defaults: temperature 1, no top-p/top-k cut): the
# agreement then estimates how often the policy's own rollouts hit the label, which is what decides
# whether an item gives GRPO any signal. The evaluation protocol (T 0.6, top-k 20) would make votes
# look more unanimous than training rollouts are.
LABELING_SAMPLING = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=1024)


@dataclass
class LabelingConfig:
    """Inputs, model and filters of one pseudo-labelling run."""

    data: str = field(default="", metadata={"help": "Input JSONL of MCQ items (synthesised questions)."})
    out: str = field(default="", metadata={"help": "Output JSONL of labelled items (kept ones only)."})
    generator: GeneratorConfig = field(default_factory=GeneratorConfig, metadata={"help": "The policy and its backend."})
    n_samples: int = field(default=8, metadata={"help": "Answers sampled per question for the vote."})
    sampling: SamplingParams = field(default=LABELING_SAMPLING, metadata={"help": "Sampling for the votes (see LABELING_SAMPLING)."})
    min_agreement: float = field(default=0.5, metadata={"help": "Keep votes whose winner has at least this share of parsed answers."})
    max_agreement: float = field(default=0.9, metadata={"help": "... and at most this share (0.9 drops unanimous votes for n <= 9)."})
    min_parsed: int | None = field(default=None, metadata={"help": "Drop questions with fewer parsed answers than this; None: half of n_samples (rounded up)."})
    extraction: Mode = field(default="lenient", metadata={"help": "lenient = strict statement first, lenient fallback; or strict only."})
    recovery: bool = field(
        default=True,
        metadata={"help": "Ask samples that state no answer once more, constrained to the question's letters (the evaluation harness's "
                           "second pass); their letters vote beside the free-form answers."},
    )
    prompt_style: Literal["chat", "text"] = field(default="chat", metadata={"help": "chat messages or plain text prompts."})
    on_error: Literal["raise", "skip"] = field(default="raise", metadata={"help": "Bad input records: stop, or skip and count."})
    chunk_size: int = field(default=128, metadata={"help": "Questions per generation call (continuously batched; progress and resume granularity)."})
    cache_dir: str = field(default="", metadata={"help": "Completions cache; default ~/.cache/medssr/completions."})
    audit_prefix: str = field(default="", metadata={"help": "Audit files PREFIX.{json,md,png}; default OUT without .jsonl + '.audit'."})
    bucket_edges: tuple[float, ...] = field(default=DEFAULT_BUCKET_EDGES, metadata={"help": "Agreement bucket edges for the audit."})

    def __post_init__(self):
        if self.n_samples < 1:
            raise ValueError("n_samples must be >= 1")
        if self.min_parsed is None:
            self.min_parsed = max(1, math.ceil(self.n_samples / 2))
        if self.sampling.allowed_letters and self.sampling.max_tokens != 1:
            # A vote constrained to the answer letters is one token, whatever max_tokens says (also in the cache key).
            self.sampling = replace(self.sampling, max_tokens=1)
        if self.min_parsed > self.n_samples:
            raise ValueError(f"min_parsed ({self.min_parsed}) cannot exceed n_samples ({self.n_samples})")
        if self.extraction not in ("strict", "lenient"):
            raise ValueError(f"extraction must be 'strict' or 'lenient', not {self.extraction!r}")
        if self.prompt_style not in ("chat", "text"):
            raise ValueError(f"prompt_style must be 'chat' or 'text', not {self.prompt_style!r}")
        SelectionRule(self.min_agreement, self.max_agreement, self.min_parsed)  # validates the bounds


@dataclass
class LabelingResult:
    """What a labelling run produced."""

    kept: list[LabeledItem]
    outcomes: list[Outcome]
    audit: dict
    rejected_records: int
    parse_rate: float
    """Share of samples whose free-form answer was read."""
    recovered_rate: float
    """Share of samples answered by the constrained second turn instead (0 without recovery)."""
    paths: dict[str, str]

    def metrics(self) -> dict[str, float]:
        """Flat numbers for MLflow, the ones the pipeline and the study log: counts, rates and precision overall,
        ``dropped.<reason>``, ``bucket_precision.<bucket>`` and ``<source>.{yield,precision_voted,precision_kept}``
        per vote source (free-form, recovered, both); a precision with nothing keyed is left out."""
        report = self.audit
        values = {
            "items": report["items"],
            "voted": report["voted"],
            "kept": report["kept"],
            "yield": report["yield"],
            "keyed_items": report["keyed_items"],
            "parse_rate": self.parse_rate,
            "recovered_rate": self.recovered_rate,
            "rejected_records": self.rejected_records,
            "precision_voted": report["precision_voted"]["precision"],
            "precision_kept": report["precision_kept"]["precision"],
            **{f"dropped.{reason}": report["dropped"].get(reason, 0) for reason in DROP_REASONS},
            **{f"bucket_precision.{bucket['bucket']}": bucket["precision"] for bucket in report["buckets"]},
        }
        if self.kept:
            values["mean_agreement_kept"] = sum(i.agreement for i in self.kept) / len(self.kept)
        for source, section in report.get("by_source", {}).items():
            values.update({f"{source}.yield": section["yield"], f"{source}.precision_voted": section["precision_voted"]["precision"],
                           f"{source}.precision_kept": section["precision_kept"]["precision"]})
        return {key: float(value) for key, value in values.items() if value is not None}


def run_labeling(config: LabelingConfig, generator: Generator | None = None) -> LabelingResult:
    """Sample, vote, filter, write the labelled JSONL and the audit. ``generator`` defaults to the one
    ``config.generator`` describes (which also identifies the model in the cache key)."""
    if not config.data or not config.out:
        raise ValueError("data and out are required")
    read = read_jsonl(config.data, MCQItem, on_error=config.on_error)
    limit = PromptLimit.for_generator(config.generator)
    if limit is not None:  # an over-long question is a rejected record, never a batch that eats the machine
        read = limit.reject_long(read, config.data, lambda item: build_prompt(item, config.prompt_style))
        if config.on_error == "raise" and read.errors:
            raise read.errors[0]
    items: list[MCQItem] = read.records
    rule = SelectionRule(config.min_agreement, config.max_agreement, config.min_parsed)

    prompts, item_keys = keyed_prompts(build_prompt(item, config.prompt_style) for item in items)
    items_by_key = dict(zip(item_keys, items))

    cache = CompletionCache(
        config.cache_dir or default_cache_root(),
        run_key(model_identity(config.generator), config.generator, config.sampling, config.n_samples, "label"),
    )
    # A constrained sampling (answer letters given) has nothing to recover: every sample is a letter.
    recover = config.recovery and not config.sampling.allowed_letters
    sampled = sample_answers(
        cache, LazyGenerator(config.generator, generator), prompts, items_by_key, config.n_samples, config.sampling,
        config.chunk_size, PIPELINES[config.extraction], recover, desc="label",
    )

    kept, outcomes = [], []
    free_total = recovered_total = 0
    for item, key in zip(items, item_keys):
        free = majority_vote(sampled.read[key])
        recovered = majority_vote(sampled.recovered[key])
        vote = majority_vote(sampled.answers(key))
        free_total += free.parsed
        recovered_total += recovered.parsed
        reason = rule.drop_reason(vote)
        sources = {"free": free, "recovered": recovered, "both": vote} if recover else {}
        outcomes.append(Outcome(item.id, kb_key(item), vote.label, vote.agreement, vote.parsed, reason is None, reason, sources))
        if reason is None:
            kept.append(
                LabeledItem(
                    **item.model_dump(),
                    label=vote.label,
                    agreement=vote.agreement,
                    votes=free.votes,
                    recovered_votes=recovered.votes,
                    n_samples=config.n_samples,
                )
            )

    write_jsonl(config.out, kept)
    report = audit(outcomes, config.min_agreement, config.max_agreement, config.bucket_edges, config.min_parsed)
    samples = len(items) * config.n_samples
    report["parse_rate"] = free_total / samples if samples else 0.0
    report["recovered_rate"] = recovered_total / samples if samples else 0.0
    report["settings"] = {
        "model": config.generator.model,
        "n_samples": config.n_samples,
        "sampling": asdict(config.sampling),
        "extraction": config.extraction,
        "recovery": recover,
        "min_parsed": config.min_parsed,
        "rejected_records": read.rejected,
    }
    prefix = config.audit_prefix or str(Path(config.out).with_suffix("")) + ".audit"
    paths = {"labeled": config.out, **write_audit(report, prefix)}
    return LabelingResult(kept, outcomes, report, read.rejected, report["parse_rate"], report["recovered_rate"], paths)
