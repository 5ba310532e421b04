"""The model input for a question, built in one place for labelling, training, evaluation and serving."""

from __future__ import annotations

from collections.abc import Sequence

from medssr.answers import shown_options
from medssr.data import MCQItem
from medssr.generation.base import ChatMessage

# The reference code's evaluation prompt (paper protocol); the final-answer format is what
# medssr.answers reads in strict mode.
SYSTEM_PROMPT = (
    "You are a professional medical expert answering a multiple-choice medical question. "
    "Please think step by step and then provide exactly one final option. "
    "Format the final answer as: The answer is [LETTER]."
)


def build_messages(item: MCQItem, system_prompt: str = SYSTEM_PROMPT) -> list[ChatMessage]:
    """Chat input for instruction-tuned models (and for TRL's conversational datasets)."""
    return [
        {"role": "system", "content": system_prompt},
        {"role": "user", "content": item.render()},
    ]


def build_prompt_text(item: MCQItem, system_prompt: str = SYSTEM_PROMPT) -> str:
    """Plain-text input for base models without a chat template."""
    return f"{system_prompt}\n\nQuestion: {item.render()}\n\nAnswer: Let's think step by step."


def build_prompt(item: MCQItem, style: str):
    """``style`` "chat": messages (instruction-tuned models); anything else: plain text (base models)."""
    return build_messages(item) if style == "chat" else build_prompt_text(item)


def shown_item(item: MCQItem, order: Sequence[str]) -> MCQItem:
    """The question as a sample with option ``order`` (:func:`medssr.answers.option_orders`) is asked it: the same
    letters, each with the text of the original option the order puts there, and no key (it names an original
    letter). Labelling and serving render it with the functions above."""
    return item.model_copy(update={"options": shown_options(item.options, order), "answer": None})
