"""The in-distribution rare-disease benchmark: new questions about what stage 1 trained on.

``raredis_heldout`` asks about conditions no training question names, which a small model cannot learn from
a few dozen GRPO steps, so a study's positive control needs a set where training can show at all. For each
knowledge question stage 1 trains on, this builds new ones of the same type and difficulty about the same
condition, with synthesis's own builder but other random draws: a diagnosis gets a fresh vignette, a gene or
inheritance question other distractors in another order. None repeats a training question (same stem and
same options) or another new one.
"""

from __future__ import annotations

import random

from medssr.data import LETTERS, MCQItem
from medssr.synthesis.config import SynthesisConfig
from medssr.synthesis.quota import derive_seed
from medssr.synthesis.run import training_builder
from medssr.synthesis.vignettes import Unbuildable, check_draft

SOURCE = "raredis_seen"
ATTEMPTS = 20
"""Draws per wanted question before it is given up (a gene with one possible distractor set runs out)."""


def _key(stem: str, options) -> tuple[str, frozenset[str]]:
    return " ".join(stem.lower().split()), frozenset(" ".join(o.lower().split()) for o in options)


def build_seen_items(trained: list[MCQItem], per_item: int, config: SynthesisConfig, seed: int) -> tuple[list[MCQItem], int]:
    """``per_item`` new questions for each knowledge question in ``trained`` (others, such as seed-based ones,
    are skipped), built as synthesis builds them under ``config``. Returns the questions and how many wanted
    ones could not be built."""
    _, _, _, builder = training_builder(config)
    taken = {_key(item.stem, item.options.values()) for item in trained}
    made: list[MCQItem] = []
    missing = 0
    for item in trained:
        meta = item.metadata
        if meta.get("origin") != "knowledge" or not meta.get("disease_ids"):
            continue
        disease_id, question_type, difficulty = meta["disease_ids"][0], meta["question_type"], meta["difficulty"]
        for copy in range(per_item):
            built = None
            for attempt in range(ATTEMPTS):
                rng = random.Random(derive_seed(seed, SOURCE, item.id, copy, attempt))
                try:
                    draft = builder.builders[question_type](disease_id, difficulty, rng)
                except Unbuildable:
                    continue
                key = _key(draft.stem, draft.options)
                if check_draft(draft) or key in taken:
                    continue
                taken.add(key)
                letters = LETTERS[: len(draft.options)]
                built = MCQItem(
                    id=f"{SOURCE}-{len(made):06d}", stem=draft.stem, options=dict(zip(letters, draft.options)),
                    answer=letters[draft.answer], source=SOURCE,
                    metadata={"question_type": question_type, "difficulty": difficulty, "disease_ids": draft.disease_ids,
                              "trained_item": item.id},
                )
                break
            if built is None:
                missing += 1
            else:
                made.append(built)
    return made, missing
