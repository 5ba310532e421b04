"""Knowledge items for a quota plan: pick a disease for each cell, build, check, deduplicate, retry."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from tqdm import tqdm

from medssr.data import LETTERS, MCQItem
from medssr.knowledge.base import KnowledgeBase
from medssr.synthesis.config import QUESTION_TYPES
from medssr.synthesis.dedup import Decontaminator, Deduplicator, rejection_reason
from medssr.synthesis.quota import Cell, derive_seed
from medssr.synthesis.vignettes import Unbuildable, VignetteBuilder, check_draft


def knowledge_pool(kb: KnowledgeBase, min_phenotypes: int) -> list[str]:
    """Rare conditions questions are built about: one entry per condition (the ORPHA entry its linked
    OMIM/DECIPHER twins were merged into), with enough phenotype annotations and a category."""
    return sorted(
        d.id for d in kb.diseases.values()
        if d.rare and d.group == d.id and d.category and len(d.phenotypes) >= min_phenotypes
    )


def diseases_by_cell(builder: VignetteBuilder, targets: list[str]) -> dict[tuple[str, str], list[str]]:
    """(category, question type) -> target diseases that can give that type."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for disease_id in targets:
        category = builder.kb.diseases[disease_id].category
        for question_type in QUESTION_TYPES:
            if builder.supports(disease_id, question_type):
                found[(category, question_type)].append(disease_id)
    return dict(found)


def build_knowledge_items(
    builder: VignetteBuilder,
    cells: list[Cell],
    candidates: dict[tuple[str, str], list[str]],
    seed: int,
    dedup: Deduplicator,
    decontaminator: Decontaminator | None,
    max_attempts: int,
    source: str,
    progress: bool = True,
) -> tuple[list[tuple[MCQItem, list[str]]], Counter, list[Cell]]:
    """One item per cell where possible. Returns (item, forbidden stem strings) pairs, rejection counts
    by reason, and the cells that stayed unfilled after ``max_attempts`` candidates."""
    made: list[tuple[MCQItem, list[str]]] = []
    rejected: Counter = Counter()
    unfilled: list[Cell] = []
    used: Counter = Counter()
    for index, cell in enumerate(tqdm(cells, desc="knowledge items", unit="item", disable=not progress)):
        pool = candidates.get((cell.category, cell.question_type), [])
        built = None
        for attempt in range(max_attempts if pool else 0):
            rng = random.Random(derive_seed(seed, "item", index, attempt))
            # of three random picks, the one least used for this type so far: spreads items over diseases
            picks = [pool[rng.randrange(len(pool))] for _ in range(3)]
            disease_id = min(picks, key=lambda d: used[(d, cell.question_type)])
            try:
                draft = builder.builders[cell.question_type](disease_id, cell.difficulty, rng)
            except Unbuildable as reason:
                rejected[str(reason)] += 1
                continue
            problem = check_draft(draft)
            if problem:
                rejected[problem] += 1
                continue
            letters = LETTERS[: len(draft.options)]
            key = letters[draft.answer]
            item = MCQItem(
                id=f"{source}-{index:06d}",
                stem=draft.stem,
                options=dict(zip(letters, draft.options)),
                answer=key,
                source=source,
                metadata={
                    "origin": "knowledge",
                    "rare": True,
                    "question_type": cell.question_type,
                    "difficulty": cell.difficulty,
                    "category": cell.category,
                    "kb_answer": key,
                    "disease_ids": draft.disease_ids,
                    "evidence": draft.evidence,
                    "rewrite": "template",
                },
            )
            reason = rejection_reason(item, dedup, decontaminator)
            if reason:
                rejected[reason] += 1
                continue
            built = (item, draft.forbidden)
            used[(disease_id, cell.question_type)] += 1
            break
        if built is None:
            unfilled.append(cell)
        else:
            made.append(built)
    return made, rejected, unfilled
