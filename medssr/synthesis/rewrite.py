"""LLM rewrite of template vignettes (and paraphrase of seed questions), batched through any generation
backend. A rewrite is kept only when it gives back the same options and does not state the answer;
otherwise the original stays and the reason is counted."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import Sequence

from tqdm import tqdm

from medssr.data import MCQItem, parse_question_text
from medssr.generation.base import Generator, SamplingParams
from medssr.knowledge.base import normalise_name
from medssr.prompts import build_messages
from medssr.synthesis.vignettes import leaks

REWRITE_PROMPT = (
    "You are a medical editor. Rewrite the multiple-choice question below as a natural clinical vignette in "
    "fluent prose, keeping every clinical finding and the question asked. Do not state, hint at or explain the "
    "answer. Then copy the answer options exactly as given, one per line, in the form 'A. text'. Output only the "
    "rewritten question followed by the options."
)
PARAPHRASE_PROMPT = (
    "You are a medical editor. Paraphrase the multiple-choice question below: reword the question text, keep "
    "every fact and the question asked, and do not state, hint at or explain the answer. Then copy the answer "
    "options exactly as given, one per line, in the form 'A. text'. Output only the paraphrased question "
    "followed by the options."
)
_STATED = re.compile(r"\b(the (correct |right )?answer is|correct (answer|option) is|answer\s*:)", re.IGNORECASE)
_FENCE = re.compile(r"^```[a-z]*\s*$", re.MULTILINE)


def check_rewrite(text: str, item: MCQItem, forbidden: Sequence[str] = ()) -> tuple[MCQItem | None, str]:
    """The rewritten item (original options and key, new stem) and 'accepted', or None and why not:
    unparseable, options_changed, answer_stated, length."""
    cleaned = _FENCE.sub("", text).strip()
    try:
        stem, options = parse_question_text(cleaned)
    except ValueError:
        return None, "unparseable"
    if not options or not stem:
        return None, "unparseable"
    if list(options) != list(item.options) or any(
        normalise_name(options[k]) != normalise_name(item.options[k]) for k in item.options
    ):
        return None, "options_changed"
    answer_text = item.options[item.answer] if item.answer else ""
    if _STATED.search(stem) or any(leaks(stem, t) for t in forbidden):
        return None, "answer_stated"
    if answer_text and leaks(stem, answer_text) and not leaks(item.stem, answer_text):
        return None, "answer_stated"
    old_words, new_words = len(item.stem.split()), len(stem.split())
    if new_words < 5 or not 0.5 * old_words <= new_words <= 3 * old_words + 20:
        return None, "length"
    return item.model_copy(update={"stem": stem}), "accepted"


def rewrite_items(
    items: list[MCQItem],
    generator: Generator,
    system_prompt: str,
    sampling: SamplingParams,
    batch_size: int,
    forbidden: list[list[str]] | None = None,
    description: str = "rewrite",
) -> tuple[list[MCQItem | None], Counter]:
    """One rewrite per item, in batches; returns the accepted rewrites (None where rejected) and counts
    of outcomes by reason."""
    results: list[MCQItem | None] = []
    outcomes: Counter = Counter()
    batch_size = max(1, batch_size)
    for start in tqdm(range(0, len(items), batch_size), desc=description, unit="batch", disable=len(items) <= batch_size):
        batch = items[start: start + batch_size]
        prompts = [build_messages(item, system_prompt=system_prompt) for item in batch]
        completions = generator.generate(prompts, n=1, sampling=replace(sampling, allowed_letters=None))
        if len(completions) != len(batch):
            raise RuntimeError(f"generator returned {len(completions)} results for {len(batch)} prompts")
        for offset, (item, outputs) in enumerate(zip(batch, completions)):
            rules = forbidden[start + offset] if forbidden else []
            rewritten, outcome = check_rewrite(outputs[0] if outputs else "", item, rules)
            results.append(rewritten)
            outcomes[outcome] += 1
    return results, outcomes
