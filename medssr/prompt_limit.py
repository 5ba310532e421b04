"""The longest prompt accepted, in tokens: records whose prompt is longer are rejected before any batching."""

from __future__ import annotations

import os
from collections.abc import Callable

from medssr.data import MCQItem, ReadResult, RecordError
from medssr.generation.base import GeneratorConfig, Prompt
from medssr.prompts import build_messages


class PromptLimit:
    """The longest prompt accepted, in tokens, counted as the backends encode it (chat template included).

    Labelling, evaluation and training reject a record whose prompt is longer, as a RecordError naming
    its file, line and longest field, before anything is batched; a prompt far too long is rejected by
    its length alone, so megabytes are never tokenized.
    """

    def __init__(self, tokenizer, max_tokens: int):
        if max_tokens < 1:
            raise ValueError(f"max_prompt_tokens: must be at least 1, got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        # No token covers more (normalised) characters than the longest vocabulary entry, so a text
        # longer than max_tokens of those has more than max_tokens tokens.
        self._normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
        self._max_chars = max_tokens * max(len(entry) for entry in tokenizer.get_vocab())

    @classmethod
    def for_generator(cls, config: GeneratorConfig) -> PromptLimit | None:
        """``config.max_prompt_tokens`` with its model's tokenizer (an openai backend's ``tokenizer``
        folder); None for an endpoint without one, which enforces its own limit."""
        from transformers import AutoTokenizer

        from medssr.models import resolve_model

        source = config.tokenizer if config.backend == "openai" else config.model
        if not source:
            return None
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(source), trust_remote_code=config.trust_remote_code)
        return cls(tokenizer, config.max_prompt_tokens)

    def tokens(self, prompt: Prompt) -> int:
        if isinstance(prompt, str):
            return len(self.tokenizer.encode(prompt, add_special_tokens=True))
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(message["content"] for message in prompt)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def problem(self, prompt: Prompt) -> str | None:
        """Why ``prompt`` is over the limit, or None when it is within it."""
        texts = [prompt] if isinstance(prompt, str) else [message["content"] for message in prompt]
        chars = sum(len(self._normalizer.normalize_str(text) if self._normalizer else text) for text in texts)
        if chars > self._max_chars:
            return f"the prompt has {chars} characters, over {self.max_tokens} tokens (max_prompt_tokens)"
        tokens = self.tokens(prompt)
        if tokens > self.max_tokens:
            return f"the prompt has {tokens} tokens; the limit is {self.max_tokens} (max_prompt_tokens)"
        return None

    def reject_long(
        self, read: ReadResult, path: str | os.PathLike, build: Callable[[MCQItem], Prompt] = build_messages
    ) -> ReadResult:
        """``read`` without the records whose prompt (``build(record)``) is over the limit; each of those
        becomes a RecordError, among the reading errors in line order."""
        kept = ReadResult(records=[], errors=list(read.errors))
        for item, line in zip(read.records, read.lines, strict=True):
            problem = self.problem(build(item))
            if problem is None:
                kept.records.append(item)
                kept.lines.append(line)
            else:
                kept.errors.append(RecordError(path, line, _longest_field(item), problem))
        kept.errors.sort(key=lambda error: error.line)
        return kept


def _longest_field(item: MCQItem) -> str:
    fields = {"stem": item.stem, **{f"options.{letter}": text for letter, text in item.options.items()}}
    return max(fields, key=lambda name: len(fields[name]))
