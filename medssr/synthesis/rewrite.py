"""LLM rewrite of template vignettes (and paraphrase of seed questions), batched through any generation
backend. A rewrite is kept only when it gives back the same options and does not state the answer;
otherwise the original stays and the reason is counted."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
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


class RewriteJournal:
    """Completions already generated, keyed by prompt and sampling, appended after every batch: a run
    interrupted during the (slow) LLM pass resumes where it stopped instead of starting over."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self.done: dict[str, str] = {}
        if self.path and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.done[row["key"]] = row["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by the interruption: generate it again

    @staticmethod
    def key(prompt, sampling: SamplingParams) -> str:
        return hashlib.sha256(json.dumps([prompt, asdict(sampling)], sort_keys=True, default=str).encode()).hexdigest()

    def add(self, entries: dict[str, str]) -> None:
        self.done.update(entries)
        if self.path and entries:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                for key, text in entries.items():
                    handle.write(json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n")

    def remove(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)


def rewrite_items(
    items: list[MCQItem],
    generator: Generator,
    system_prompt: str,
    sampling: SamplingParams,
    batch_size: int,
    forbidden: list[list[str]] | None = None,
    description: str = "rewrite",
    journal: RewriteJournal | None = None,
) -> tuple[list[MCQItem | None], Counter]:
    """One rewrite per item, in batches (prompts already in ``journal`` are not generated again); returns
    the accepted rewrites (None where rejected) and counts of outcomes by reason."""
    journal = journal or RewriteJournal(None)
    sampling = replace(sampling, allowed_letters=None)
    prompts = [build_messages(item, system_prompt=system_prompt) for item in items]
    keys = [RewriteJournal.key(prompt, sampling) for prompt in prompts]
    missing = [i for i, key in enumerate(keys) if key not in journal.done]
    batch_size = max(1, batch_size)
    for start in tqdm(range(0, len(missing), batch_size), desc=description, unit="batch",
                      disable=len(missing) <= batch_size):
        batch = missing[start: start + batch_size]
        completions = generator.generate([prompts[i] for i in batch], n=1, sampling=sampling)
        if len(completions) != len(batch):
            raise RuntimeError(f"generator returned {len(completions)} results for {len(batch)} prompts")
        journal.add({keys[i]: (outputs[0] if outputs else "") for i, outputs in zip(batch, completions)})
    results: list[MCQItem | None] = []
    outcomes: Counter = Counter()
    for index, item in enumerate(items):
        rules = forbidden[index] if forbidden else []
        rewritten, outcome = check_rewrite(journal.done[keys[index]], item, rules)
        results.append(rewritten)
        outcomes[outcome] += 1
    return results, outcomes
