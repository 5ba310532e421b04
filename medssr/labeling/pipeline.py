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
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from medssr.answers import Mode, majority_vote, option_orders, original_letter
from medssr.data import LabeledItem, MCQItem, read_jsonl, write_jsonl
from medssr.evaluation.cache import CompletionCache, default_cache_root, model_identity, prompt_key, run_key
from medssr.evaluation.filters import PIPELINES
from medssr.evaluation.recovery import LazyGenerator, sample_answers
from medssr.generation.base import Generator, GeneratorConfig, SamplingParams
from medssr.labeling.audit import DEFAULT_BUCKET_EDGES, Outcome, audit, kb_key, write_audit
from medssr.labeling.selection import DROP_REASONS, SelectionRule
from medssr.prompt_limit import PromptLimit
from medssr.prompts import build_prompt, shown_item

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
    permute_options: bool = field(default=False, metadata={"help": (
        "Each sample sees the options in its own seeded order (medssr.answers.option_orders: every option at every position "
        "as evenly as n_samples allows) and votes for the option it chose by content, mapped back to the question's letters: "
        "a vote that cannot favour a position.")})
    permutation_seed: int = field(default=0, metadata={"help": "Seed of the option orders (with each question's id)."})
    audit_option_order: bool = field(default=False, metadata={"help": (
        "Also vote the other way (fixed order when permute_options is on, permuted when off) and report both votes' "
        "precision in the audit; samples every question twice.")})
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
        for order, section in report.get("by_order", {}).items():
            values.update({f"order.{order}.yield": section["yield"], f"order.{order}.precision_voted": section["precision_voted"]["precision"],
                           f"order.{order}.precision_kept": section["precision_kept"]["precision"]})
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
    generator = LazyGenerator(config.generator, generator)
    # A constrained sampling (answer letters given) has nothing to recover: every sample is a letter.
    recover = config.recovery and not config.sampling.allowed_letters
    sampled = sample_votes(config, items, config.permute_options, generator, recover)

    kept, outcomes = [], []
    free_total = recovered_total = 0
    for item, (read_letters, recovered_letters) in zip(items, sampled):
        free = majority_vote(read_letters)
        recovered = majority_vote(recovered_letters)
        vote = majority_vote(reference_answers(read_letters, recovered_letters))
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
    by_order = {}
    if config.audit_option_order:  # the same questions voted on in the other order, for the audit alone
        other = [_outcome(item, majority_vote(reference_answers(*answers)), rule)
                 for item, answers in zip(items, sample_votes(config, items, not config.permute_options, generator, recover))]
        by_order = {ORDER_NAMES[config.permute_options]: outcomes, ORDER_NAMES[not config.permute_options]: other}

    write_jsonl(config.out, kept)
    report = audit(outcomes, config.min_agreement, config.max_agreement, config.bucket_edges, config.min_parsed, by_order)
    samples = len(items) * config.n_samples
    report["parse_rate"] = free_total / samples if samples else 0.0
    report["recovered_rate"] = recovered_total / samples if samples else 0.0
    report["settings"] = {
        "model": config.generator.model,
        "n_samples": config.n_samples,
        "sampling": asdict(config.sampling),
        "extraction": config.extraction,
        "recovery": recover,
        "permute_options": config.permute_options,
        "permutation_seed": config.permutation_seed,
        "min_parsed": config.min_parsed,
        "rejected_records": read.rejected,
    }
    prefix = config.audit_prefix or str(Path(config.out).with_suffix("")) + ".audit"
    paths = {"labeled": config.out, **write_audit(report, prefix)}
    return LabelingResult(kept, outcomes, report, read.rejected, report["parse_rate"], report["recovered_rate"], paths)


ORDER_NAMES = {False: "fixed", True: "permuted"}
"""The audit's names of the two option orders a vote can see."""


def reference_answers(read: list[str | None], recovered: list[str | None]) -> list[str | None]:
    """Each sample's read answer, else its recovered letter (the reference protocol's answer)."""
    return [answer if answer is not None else rescued for answer, rescued in zip(read, recovered, strict=True)]


def _outcome(item: MCQItem, vote, rule: SelectionRule) -> Outcome:
    reason = rule.drop_reason(vote)
    return Outcome(item.id, kb_key(item), vote.label, vote.agreement, vote.parsed, reason is None, reason)


def sample_votes(config: LabelingConfig, items: list[MCQItem], permute: bool, generator: LazyGenerator,
                 recover: bool) -> list[tuple[list[str | None], list[str | None]]]:
    """Per item, its ``n_samples`` answers read from the completions and the second pass's recovered letters (None
    where there is none), in the question's own letters. With ``permute`` each sample is asked with its own option
    order (:func:`medssr.answers.option_orders`) and its letters are mapped back to the question's."""
    orders = [option_orders(item.letters, config.n_samples, config.permutation_seed, item.id) if permute else [None] for item in items]
    asked = [[(item if order is None else shown_item(item, order), order) for order in item_orders]
             for item, item_orders in zip(items, orders)]
    # Samples per distinct prompt: all n_samples of an unpermuted question; one per order permuted (more where an
    # order repeats, with fewer orders than samples). Each count is sampled (and cached) as a run of its own.
    prompts, shown_of, samples_of = {}, {}, Counter()
    keys = [[prompt_key(build_prompt(shown, config.prompt_style)) for shown, _ in pairs] for pairs in asked]
    for pairs, pair_keys in zip(asked, keys):
        for (shown, order), key in zip(pairs, pair_keys):
            prompts[key], shown_of[key] = build_prompt(shown, config.prompt_style), shown
            samples_of[key] = config.n_samples if order is None else samples_of[key] + 1
    answers: dict[str, list[tuple[str | None, str | None]]] = {}
    for count in sorted(set(samples_of.values())):
        batch = {key: prompts[key] for key, samples in samples_of.items() if samples == count}
        cache = CompletionCache(
            config.cache_dir or default_cache_root(),
            run_key(model_identity(config.generator), config.generator, config.sampling, count, "label-permuted" if permute else "label"),
        )
        sampled = sample_answers(cache, generator, batch, shown_of, count, config.sampling, config.chunk_size,
                                 PIPELINES[config.extraction], recover, desc="label")
        answers.update({key: list(zip(sampled.read[key], sampled.recovered[key])) for key in batch})
    out, taken = [], Counter()
    for pairs, pair_keys in zip(asked, keys):
        read, recovered = [], []
        for (shown, order), key in zip(pairs, pair_keys):
            samples = answers[key] if order is None else [answers[key][taken[key]]]
            taken[key] += 1
            for answer, rescued in samples:
                read.append(answer if order is None else original_letter(answer, shown.letters, order))
                recovered.append(rescued if order is None else original_letter(rescued, shown.letters, order))
        out.append((read, recovered))
    return out
