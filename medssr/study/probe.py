"""The premise probe: is the base model's majority vote right more often than chance, question type by type?

Stage 1 trains on the policy's own majority vote, so it can teach something only where that vote beats
chance. The probe synthesises ``items_per_type`` knowledge-base questions of each type (about the diseases
training synthesis draws from), labels each with ``votes`` samples of the base model, every sample seeing the
options in its own order (``labeling.permute_options``: the vote cannot follow a position), and reports per
type the precision of the majority vote against the key with its Wilson 95% interval, beside chance (the mean
of 1/k). The rule is fixed before the run: a type goes on when the interval's lower bound is at least chance
plus ``margin`` (10 points).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medssr.synthesis.config import QUESTION_TYPES


@dataclass
class ProbeConfig:
    """Which model, how many questions and votes per type, and the rule that decides which types go on."""

    model: str = field(default="smollm2", metadata={"help": "The base model probed (a folder, hub id, or smollm2 / tiny)."})
    out_dir: str = field(default=".medssr/probe/smollm2", metadata={"help": "Folder of the probe's questions, votes, table and cache."})
    question_types: list[str] = field(default_factory=lambda: list(QUESTION_TYPES), metadata={
        "help": f"Question types probed, of {', '.join(QUESTION_TYPES)}."})
    items_per_type: int = field(default=100, metadata={"help": "Questions per type."})
    votes: int = field(default=8, metadata={"help": "Samples voting on each question."})
    options_per_item: int = field(default=5, metadata={"help": "Options per question (chance is 1 in this many)."})
    max_tokens: int = field(default=96, metadata={"help": "Tokens per sample (the second pass asks those that state no answer)."})
    margin: float = field(default=0.10, metadata={"help": "A type goes on when the Wilson lower bound is at least chance + margin."})
    seed: int = field(default=0, metadata={"help": "Seed of the questions, the option orders and the sampling."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per forward batch."})
    allowed_letters: list[str] = field(default_factory=list, metadata={"help": (
        "Vote by one constrained letter instead of free text (for a model that cannot state an answer, e.g. the tiny test model).")})

    def __post_init__(self):
        unknown = sorted(set(self.question_types) - set(QUESTION_TYPES))
        if unknown or not self.question_types:
            raise ValueError(f"question_types: must be some of {', '.join(QUESTION_TYPES)}, not {unknown or 'none'}")
        for name in ("items_per_type", "votes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"margin: must be in [0, 1), got {self.margin}")


def goes_on(low: float | None, chance: float, margin: float) -> bool:
    """The pre-registered rule: the vote's precision is credibly (Wilson lower bound) at least margin above chance."""
    return low is not None and low >= chance + margin - 1e-12


def probe_items(question_type: str, n: int, options_per_item: int, seed: int) -> list:
    """``n`` knowledge-base questions of one type about the diseases training synthesis draws from."""
    from medssr.knowledge.base import default_knowledge_base
    from medssr.synthesis.config import DIFFICULTIES, HELDOUT_FRACTION
    from medssr.synthesis.dedup import Deduplicator
    from medssr.synthesis.heldout import split_pool
    from medssr.synthesis.knowledge_items import build_knowledge_items, diseases_by_cell, knowledge_pool
    from medssr.synthesis.quota import derive_seed, plan_cells
    from medssr.synthesis.vignettes import VignetteBuilder

    kb = default_knowledge_base()
    training, _ = split_pool(kb, 5, HELDOUT_FRACTION)
    builder = VignetteBuilder(kb, knowledge_pool(kb, 5), {"easy": 6, "medium": 4, "hard": 3}, options_per_item)
    candidates = {cell: diseases for cell, diseases in diseases_by_cell(builder, training).items() if cell[1] == question_type}
    sizes: dict[str, float] = {}
    for category, _ in candidates:
        sizes[category] = sizes.get(category, 0) + len(candidates[(category, question_type)])
    source = f"probe-{question_type}"
    cells = plan_cells(n, sizes, {question_type: 1.0}, {d: 1.0 for d in DIFFICULTIES}, derive_seed(seed, source),
                       {category: {question_type} for category in sizes})
    made, _, _ = build_knowledge_items(builder, cells, candidates, derive_seed(seed, source), Deduplicator(), None, 40, source, progress=False)
    return [item for item, _ in made]


def run_probe(config: ProbeConfig) -> dict:
    """Probe every type; write ``probe.json`` and ``probe.md`` in out_dir; return the table."""
    from medssr import models
    from medssr.data import write_jsonl
    from medssr.evaluation.calibration import wilson_interval
    from medssr.generation.base import GeneratorConfig, SamplingParams
    from medssr.labeling import LABELING_SAMPLING, LabelingConfig, run_labeling
    from medssr.storage import write_text

    out = Path(config.out_dir)
    model = models.model_location(config.model, build_dir=out / "model")
    rows = []
    for question_type in config.question_types:
        items = probe_items(question_type, config.items_per_type, config.options_per_item, config.seed)
        write_jsonl(out / question_type / "items.jsonl", items)
        sampling = SamplingParams(**{**asdict(LABELING_SAMPLING), "max_tokens": config.max_tokens, "seed": config.seed,
                                     "allowed_letters": list(config.allowed_letters)})
        labeled = run_labeling(LabelingConfig(
            data=str(out / question_type / "items.jsonl"), out=str(out / question_type / "labels.jsonl"),
            generator=GeneratorConfig(model=model, batch_size=config.batch_size, progress=False), n_samples=config.votes, sampling=sampling,
            min_agreement=0.0, max_agreement=1.0, min_parsed=1, permute_options=True, permutation_seed=config.seed,
            cache_dir=str(out / "cache"),
        ))
        voted = labeled.audit["precision_voted"]
        low, high = wilson_interval(voted["correct"], voted["n"]) or (None, None)
        chance = sum(1 / len(item.options) for item in items) / len(items) if items else float("nan")
        rows.append({"question_type": question_type, "items": len(items), "voted": voted["n"], "correct": voted["correct"],
                     "precision": voted["precision"], "ci95": [low, high], "chance": chance, "goes_on": goes_on(low, chance, config.margin)})
    table = {"model": model, "settings": asdict(config), "rule": f"Wilson 95% lower bound >= chance + {config.margin:g}", "types": rows}
    write_text(out / "probe.json", json.dumps(table, indent=2) + "\n")
    write_text(out / "probe.md", markdown(table))
    return table


def markdown(table: dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["# Premise probe", "", f"Base model `{table['model']}`; {table['settings']['votes']} votes per question, each sample in its own "
             f"option order; rule fixed before the run: {table['rule']}.", "",
             "| type | questions | voted | right | precision | 95% interval (Wilson) | chance | goes on |", "|---|---:|---:|---:|---:|---|---:|---|"]
    for row in table["types"]:
        low, high = row["ci95"]
        lines.append(f"| {row['question_type']} | {row['items']} | {row['voted']} | {row['correct']} | {pct(row['precision'])} | "
                     f"[{pct(low)}, {pct(high)}] | {pct(row['chance'])} | {'yes' if row['goes_on'] else 'no'} |")
    going = [row["question_type"] for row in table["types"] if row["goes_on"]]
    lines += ["", f"Types that go on: {', '.join(going)}." if going else
              "No type goes on: the base model's majority vote is not credibly better than chance on any of them, so stage 1 has "
              "nothing right to learn from its own labels."]
    return "\n".join(lines) + "\n"
