"""A second, letter-constrained turn for the completions that need one, on any backend.

The evaluation harness asks a model once more when strict extraction cannot read its answer: the
conversation so far (prompt and completion) goes on with one more user turn, and the reply is one
greedy token among the question's own letters. :func:`generate_with_follow_up` runs a backend's own
implementation when it has one (the transformers backend continues each finished row's key/value
cache, so only the few new tokens are computed) and otherwise sends the continued conversations as a
second call. Both read the same conversation: the prompt, the completion, then ``instruction``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medssr.generation.base import Generator, Prompt, SamplingParams


@dataclass(frozen=True)
class FollowUp:
    """Which completions get a second turn, what it says, and which letters may answer it."""

    instruction: str
    """The next user turn, e.g. "Respond with one option only. The answer is"."""
    letters: Sequence[tuple[str, ...]]
    """Allowed answer letters of each prompt, in prompt order."""
    needed: Callable[[int, int, str], bool]
    """``needed(prompt_index, sample_index, completion)``: ask this completion again?"""


def continuation(prompt: Prompt, completion: str, instruction: str) -> Prompt:
    """The conversation after ``completion``, ending with ``instruction`` and awaiting the reply."""
    if isinstance(prompt, str):
        return f"{prompt}{completion}\n{instruction}"
    return [*prompt, {"role": "assistant", "content": completion}, {"role": "user", "content": instruction}]


def ask_follow_up(
    generator: Generator, prompts: Sequence[Prompt], completions: Sequence[Sequence[str]], follow_up: FollowUp
) -> list[list[str | None]]:
    """The follow-up letter of every completion ``follow_up.needed`` picks (None elsewhere), as second
    generation calls grouped by letter set."""
    answers: list[list[str | None]] = [[None] * len(samples) for samples in completions]
    groups: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    for p, samples in enumerate(completions):
        for s, text in enumerate(samples):
            if follow_up.needed(p, s, text):
                groups.setdefault(tuple(follow_up.letters[p]), []).append((p, s))
    for letters, cells in groups.items():
        sampling = SamplingParams(temperature=0.0, max_tokens=1, allowed_letters=letters)
        outputs = generator.generate(
            [continuation(prompts[p], completions[p][s], follow_up.instruction) for p, s in cells], n=1, sampling=sampling
        )
        for (p, s), output in zip(cells, outputs):
            answers[p][s] = output[0]
    return answers


def generate_with_follow_up(
    generator: Generator, prompts: Sequence[Prompt], n: int, sampling: SamplingParams, follow_up: FollowUp
) -> tuple[list[list[str]], list[list[str | None]]]:
    """``n`` completions per prompt and, for those that need it, the follow-up letter (else None)."""
    native = getattr(generator, "generate_with_follow_up", None)
    if native is not None:
        return native(prompts, n=n, sampling=sampling, follow_up=follow_up)
    completions = generator.generate(prompts, n=n, sampling=sampling)
    return completions, ask_follow_up(generator, prompts, completions, follow_up)
