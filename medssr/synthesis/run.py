"""``run_synthesis``: the whole synthesis stage, from config to JSONL + stats + chart."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from medssr.data import MCQItem, write_jsonl
from medssr.generation.base import Generator
from medssr.knowledge.base import KnowledgeBase, default_knowledge_base, load_knowledge_base
from medssr.storage import atomic_writer
from medssr.synthesis.config import SynthesisConfig
from medssr.synthesis.dedup import Decontaminator, Deduplicator, rejection_reason
from medssr.synthesis.heldout import split_pool
from medssr.synthesis.knowledge_items import build_knowledge_items, diseases_by_cell
from medssr.synthesis.quota import derive_seed, largest_remainder, plan_cells
from medssr.synthesis.rewrite import PARAPHRASE_PROMPT, REWRITE_PROMPT, RewriteJournal, rewrite_items
from medssr.synthesis.seeds import read_seed_questions, shuffle_options
from medssr.synthesis.stats import achieved_shares, shares, write_chart
from medssr.synthesis.vignettes import VignetteBuilder

SOURCE = "medssr-synth"


@dataclass
class SynthesisResult:
    """Where the items, the stats and the chart went, and the stats themselves."""

    path: Path
    stats_path: Path
    chart_path: Path
    stats: dict


def _category_weights(config: SynthesisConfig, training: list[str], kb) -> dict[str, float]:
    sizes = Counter(kb.diseases[d].category for d in training)
    if config.category_weights is None:
        present = {c: 1.0 for c, size in sizes.items() if size >= config.min_category_diseases}
        if not present:
            raise ValueError("category_weights: no category has min_category_diseases training diseases")
        return present
    unknown = sorted(c for c, w in config.category_weights.items() if w > 0 and not sizes.get(c))
    if unknown:
        raise ValueError(
            f"category_weights: no training diseases in {', '.join(unknown)}; known: {', '.join(sorted(sizes))}"
        )
    return {c: float(w) for c, w in config.category_weights.items() if w > 0}


def _seed_items(config: SynthesisConfig, count: int, dedup: Deduplicator, decontaminator, counters: dict) -> list[MCQItem]:
    if count == 0:
        return []
    seeds, read_counts = read_seed_questions(config.seed_questions)
    counters["seed_questions"] = read_counts
    if len(seeds) < count:
        raise ValueError(
            f"seed_questions: {config.seed_questions} has {len(seeds)} usable questions but rare_ratio "
            f"{config.rare_ratio} asks for {count} seed-based items; add questions or raise rare_ratio"
        )
    rng = random.Random(derive_seed(config.seed, "seeds"))
    order = list(range(len(seeds)))
    rng.shuffle(order)
    made: list[MCQItem] = []
    rejected: Counter = Counter()
    for position in order:
        if len(made) == count:
            break
        seed_item = seeds[position]
        options, answer, shuffled = shuffle_options(seed_item, random.Random(derive_seed(config.seed, "seed", position)))
        item = MCQItem(
            id=f"{SOURCE}-seed-{position:06d}",
            stem=seed_item.stem,
            options=options,
            answer=answer,
            source=SOURCE,
            metadata={
                "origin": "seed",
                "rare": False,
                "question_type": "seed",
                "difficulty": None,
                "category": None,
                "kb_answer": answer,
                "disease_ids": [],
                "evidence": {"seed_id": seed_item.id, "seed_source": seed_item.source, "seed_answer": seed_item.answer},
                "seed_transform": "shuffled" if shuffled else "kept_order",
            },
        )
        reason = rejection_reason(item, dedup, decontaminator)
        if reason:
            rejected[reason] += 1
            continue
        made.append(item)
    counters["seed_rejections"] = dict(sorted(rejected.items()))
    return made


def _resolve_generator(config: SynthesisConfig, generator: Generator | None, n_seed: int) -> Generator | None:
    """The generator to rewrite/paraphrase with: the one passed in, else one built from the config when
    a rewrite or a seed paraphrase is wanted; None means seeds keep their wording (options shuffled)."""
    wanted = config.rewrite or (config.paraphrase_seeds and n_seed > 0)
    if generator is not None or not wanted:
        return generator
    if config.generator is None:
        if config.rewrite:
            raise ValueError("rewrite: needs a generator (pass one, or set `generator` in the config)")
        return None
    from medssr.generation import build_generator

    return build_generator(config.generator)


def _without_contaminated(rewritten: list, outcomes: Counter, decontaminator) -> list:
    """Accepted rewrites, except those that now overlap a benchmark (counted as 'contaminated')."""
    clean = []
    for new in rewritten:
        if new is not None and decontaminator is not None and decontaminator.contaminated(new):
            outcomes["contaminated"] += 1
            outcomes["accepted"] -= 1
            new = None
        clean.append(new)
    return clean


def _apply_rewrites(config, generator, knowledge, seeds, decontaminator, counters, journal) -> tuple[list, list]:
    sampling = dataclasses.replace(config.rewrite_sampling, seed=config.seed)
    if config.rewrite and knowledge:
        rewritten, outcomes = rewrite_items(
            [item for item, _ in knowledge], generator, REWRITE_PROMPT, sampling, config.rewrite_batch_size,
            [forbidden for _, forbidden in knowledge], "rewrite", journal,
        )
        rewritten = _without_contaminated(rewritten, outcomes, decontaminator)
        knowledge = [
            (item.model_copy(update={"metadata": {**item.metadata, "rewrite": "rejected"}}), forbidden) if new is None
            else (new.model_copy(update={"metadata": {**new.metadata, "rewrite": "accepted", "template_stem": item.stem}}),
                  forbidden)
            for (item, forbidden), new in zip(knowledge, rewritten)
        ]
        counters["rewrite"] = dict(sorted(outcomes.items()))
    if config.paraphrase_seeds and seeds:
        paraphrased, outcomes = rewrite_items(seeds, generator, PARAPHRASE_PROMPT, sampling, config.rewrite_batch_size,
                                              None, "paraphrase", journal)
        paraphrased = _without_contaminated(paraphrased, outcomes, decontaminator)
        seeds = [
            item.model_copy(update={"metadata": {**item.metadata, "paraphrase": "rejected"}}) if new is None
            else new.model_copy(update={"metadata": {**new.metadata, "seed_transform": "paraphrased",
                                                     "original_stem": item.stem}})
            for item, new in zip(seeds, paraphrased)
        ]
        counters["paraphrase"] = dict(sorted(outcomes.items()))
    return knowledge, seeds


def training_builder(config: SynthesisConfig) -> tuple[KnowledgeBase, list[str], list[str], VignetteBuilder]:
    """The knowledge base, its training and held-out conditions, and the vignette builder over the training ones
    that synthesis (and the in-distribution set, :mod:`medssr.synthesis.seen`) builds questions with."""
    kb = load_knowledge_base(config.cache_dir) if config.cache_dir else default_knowledge_base()
    training, heldout = split_pool(kb, config.min_phenotypes, config.heldout_fraction)
    return kb, training, heldout, VignetteBuilder(kb, training, config.findings_shown, config.options_per_item, config.similarity_with_ancestors)


def run_synthesis(config: SynthesisConfig, out: str | Path, generator: Generator | None = None) -> SynthesisResult:
    """Synthesize ``config.n`` items into ``out`` (JSONL of MCQItem), with ``out.stats.json`` and
    ``out.stats.png`` beside it. Same config and seed give byte-identical JSONL (given the same
    generator output when rewriting)."""
    started = time.perf_counter()
    out = Path(out)
    kb, training, heldout, builder = training_builder(config)
    candidates = diseases_by_cell(builder, training)

    n_rare = largest_remainder(config.n, {"rare": config.rare_ratio, "seed": 1.0 - config.rare_ratio}).get("rare", 0)
    n_seed = config.n - n_rare
    weights = {
        "category": _category_weights(config, training, kb),
        "question_type": {k: float(v) for k, v in config.question_types.items() if v > 0},
        "difficulty": {k: float(v) for k, v in config.difficulty.items() if v > 0},
    }
    supports = {c: {t for (cat, t) in candidates if cat == c} for c in weights["category"]}
    cells = plan_cells(n_rare, weights["category"], weights["question_type"], weights["difficulty"], config.seed, supports)

    decontaminator = Decontaminator(config.decontaminate_against, config.contamination_ngram) if config.decontaminate_against else None
    dedup = Deduplicator(config.near_duplicate_threshold, config.shingle_size)
    counters: dict = {}
    generator = _resolve_generator(config, generator, n_seed)

    template_started, template_cpu_started = time.perf_counter(), time.process_time()
    knowledge, rejected, unfilled = build_knowledge_items(
        builder, cells, candidates, config.seed, dedup, decontaminator, config.max_attempts_per_item, SOURCE
    )
    template_seconds = time.perf_counter() - template_started
    template_cpu_seconds = time.process_time() - template_cpu_started
    seeds = _seed_items(config, n_seed, dedup, decontaminator, counters)
    journal = RewriteJournal(out.with_name(out.name + ".rewrite-journal.jsonl"))
    if generator is not None:
        knowledge, seeds = _apply_rewrites(config, generator, knowledge, seeds, decontaminator, counters, journal)

    items = [item for item, _ in knowledge] + seeds
    random.Random(derive_seed(config.seed, "order")).shuffle(items)
    items = [item.model_copy(update={"id": f"{SOURCE}-s{config.seed}-{i:06d}"}) for i, item in enumerate(items)]
    write_jsonl(out, items)

    requested = {
        "rarity": shares({"rare": n_rare, "seed": n_seed}),
        **{dimension: shares(w) for dimension, w in weights.items()},
    }
    achieved = achieved_shares(items)
    contaminated = rejected.get("contaminated", 0) + counters.get("seed_rejections", {}).get("contaminated", 0)
    stats = {
        "n_requested": config.n,
        "n_written": len(items),
        "knowledge_items": len(knowledge),
        "seed_items": len(seeds),
        "requested": requested,
        "achieved": achieved,
        "shortfall": {
            "knowledge": len(unfilled),
            "seed": n_seed - len(seeds),
            "unfilled_cells": dict(sorted(Counter(f"{c.category}/{c.question_type}/{c.difficulty}" for c in unfilled).items())),
        },
        "knowledge_rejections": dict(sorted(rejected.items())),
        "dedup": {
            "exact_duplicate": rejected.get("exact_duplicate", 0) + counters.get("seed_rejections", {}).get("exact_duplicate", 0),
            "near_duplicate": rejected.get("near_duplicate", 0) + counters.get("seed_rejections", {}).get("near_duplicate", 0),
            "threshold": config.near_duplicate_threshold,
        },
        "decontamination": {
            "contaminated": contaminated + counters.get("rewrite", {}).get("contaminated", 0)
            + counters.get("paraphrase", {}).get("contaminated", 0),
            "ngram": config.contamination_ngram,
            "benchmark_questions": decontaminator.files if decontaminator else {},
        },
        "seed_questions": counters.get("seed_questions", {}),
        "seed_rejections": counters.get("seed_rejections", {}),
        "rewrite": counters.get("rewrite", {}),
        "paraphrase": counters.get("paraphrase", {}),
        "knowledge_base": {
            "hpo_version": kb.version,
            "diseases": len(kb.diseases),
            "training_conditions": len(training),
            "heldout_conditions": len(heldout),
        },
        "timing": {
            "knowledge_base_load_seconds": round(kb.load_seconds, 3),
            "knowledge_base_from_cache": kb.from_cache,
            "template_seconds": round(template_seconds, 3),
            "template_items_per_second": round(len(knowledge) / template_seconds, 1) if template_seconds > 0 else None,
            # CPU time: what the rate would be on an otherwise idle core (the build is single-threaded)
            "template_cpu_seconds": round(template_cpu_seconds, 3),
            "template_items_per_cpu_second": round(len(knowledge) / template_cpu_seconds, 1)
            if template_cpu_seconds > 0 else None,
            "total_seconds": round(time.perf_counter() - started, 3),
        },
        "config": dataclasses.asdict(config),
    }
    stats_path = out.with_name(out.name + ".stats.json")
    chart_path = out.with_name(out.name + ".stats.png")
    with atomic_writer(stats_path) as handle:
        json.dump(stats, handle, indent=2, default=str)
        handle.write("\n")
    write_chart(chart_path, requested, achieved)
    journal.remove()
    return SynthesisResult(out, stats_path, chart_path, stats)
