"""The held-out rare-disease benchmark: questions about conditions that training synthesis never uses.

The split is a deterministic hash of each condition's group id (its ORPHA entry), so it needs no
stored list and never changes between runs or machines.
"""

from __future__ import annotations

from medssr.data import MCQItem
from medssr.knowledge.base import KnowledgeBase, default_knowledge_base
from medssr.synthesis.config import DIFFICULTIES, HELDOUT_FRACTION, QUESTION_TYPES
from medssr.synthesis.dedup import Deduplicator
from medssr.synthesis.knowledge_items import build_knowledge_items, diseases_by_cell, knowledge_pool
from medssr.synthesis.quota import derive_seed, plan_cells
from medssr.synthesis.vignettes import VignetteBuilder

SOURCE = "raredis_heldout"


def _group_heldout(group_id: str, fraction: float) -> bool:
    return derive_seed("heldout", group_id) / 2**64 < fraction


def is_heldout(disease_id: str, fraction: float = HELDOUT_FRACTION, kb: KnowledgeBase | None = None) -> bool:
    """Whether a disease belongs to the held-out split. OMIM/DECIPHER ids follow the ORPHA entry they
    are linked to, so the same condition never sits on both sides."""
    group = disease_id
    if not disease_id.startswith("ORPHA:"):
        disease = (kb or default_knowledge_base()).diseases.get(disease_id)
        group = disease.group if disease is not None else disease_id
    return _group_heldout(group, fraction)


def split_pool(kb: KnowledgeBase, min_phenotypes: int, fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) conditions of the knowledge pool."""
    pool = knowledge_pool(kb, min_phenotypes)
    heldout = [d for d in pool if _group_heldout(kb.diseases[d].group, fraction)]
    chosen = set(heldout)
    return [d for d in pool if d not in chosen], heldout


def build_heldout_benchmark(
    n: int,
    seed: int,
    heldout_fraction: float = HELDOUT_FRACTION,
    options_per_item: int = 5,
    min_phenotypes: int = 5,
    kb: KnowledgeBase | None = None,
) -> list[MCQItem]:
    """``n`` knowledge questions whose answer diseases are all held out from training synthesis.
    Categories follow the held-out diseases' own mix; question types and difficulties are uniform."""
    kb = kb or default_knowledge_base()
    _, heldout = split_pool(kb, min_phenotypes, heldout_fraction)
    # distractors may come from any condition: only answers need to be unseen
    builder = VignetteBuilder(kb, knowledge_pool(kb, min_phenotypes), {"easy": 6, "medium": 4, "hard": 3}, options_per_item)
    candidates = diseases_by_cell(builder, heldout)
    category_sizes: dict[str, float] = {}
    for disease_id in heldout:
        category = kb.diseases[disease_id].category
        category_sizes[category] = category_sizes.get(category, 0) + 1
    supports = {c: {t for (cat, t) in candidates if cat == c} for c in category_sizes}
    cells = plan_cells(
        n, category_sizes, {t: 1.0 for t in QUESTION_TYPES}, {d: 1.0 for d in DIFFICULTIES},
        derive_seed(seed, SOURCE), supports,
    )
    made, _, _ = build_knowledge_items(
        builder, cells, candidates, derive_seed(seed, SOURCE), Deduplicator(), None, 40, SOURCE, progress=False
    )
    return [item for item, _ in made]
