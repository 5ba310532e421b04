"""One request's prompts in an engine: their text as it comes, then their results and the vote.

An engine (:mod:`medssr.serving.engine`) sends each prompt's deltas to the request's queue;
:class:`RequestRun` gathers them per choice (text, token ids, log-probabilities) and, once every sample has
ended, gives each prompt's :class:`JobResult`: its completions, with the letter a multiple-choice
question's completions chose read by :mod:`medssr.answers` (under ``permute_options`` read against the options
as each sample saw them, then mapped back to the question's letters), and voted on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from medssr.answers import extract_answer, majority_vote, original_letter, shown_options
from medssr.generation.step_decoder import Delta, TokenLogprob
from medssr.serving.engine import DecodeFailed, DecoderStopped, Engine, Ticket
from medssr.serving.protocol import GenerationSettings, PromptJob, RequestError


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    answer: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    shown_answer: str | None = None
    """Under ``permute_options``: the letter as the sample saw the options (``answer`` is the question's)."""


@dataclass
class JobResult:
    """The completions of one prompt, its token count, the question's letters when multiple-choice, and the
    option order each completion saw under ``permute_options``."""

    completions: list[Completion]
    prompt_tokens: int
    options: dict[str, str] = field(default_factory=dict)
    prompt_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    orders: tuple[tuple[str, ...], ...] = ()
    permutation_seed: int | None = None

    @property
    def letters(self) -> str:
        return "".join(self.options)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.completions)

    def answer_summary(self, abstain_below: float | None = None) -> dict[str, Any] | None:
        """For a multiple-choice question (else None): the majority letter of the completions (None on a
        tie), its agreement (share of the parsed answers that chose it), the votes per letter and each
        completion's letter, by :func:`medssr.answers.majority_vote`, the vote labelling uses. With
        ``abstain_below``, ``abstained`` says whether agreement fell below it; then ``answer`` is None
        and ``majority`` still names the letter. Under ``permute_options``, ``answers`` are in the question's
        letters and ``permutation`` gives the seed, each completion's order (shown letter ``letters[i]`` was
        option ``order[i]``) and the letter it chose as shown.
        """
        if not self.options:
            return None
        answers = [c.answer for c in self.completions]
        vote = majority_vote(answers)
        summary = {"answer": vote.label, "majority": vote.label, "agreement": vote.agreement, "votes": vote.votes,
                   "parsed": vote.parsed, "letters": self.letters, "answers": answers}
        if self.orders:
            summary["permutation"] = {"seed": self.permutation_seed, "orders": ["".join(order) for order in self.orders],
                                      "shown_answers": [c.shown_answer for c in self.completions]}
        if abstain_below is not None:
            abstained = vote.agreement < abstain_below
            summary.update(abstain_below=abstain_below, abstained=abstained, answer=None if abstained else vote.label)
        return summary


def decode_error(model: str, failure: DecodeFailed) -> RequestError:
    """The answer to a request that could not be decoded: 503 once the decode thread is gone (the pod is not
    ready), else 500 with the failed step's reason."""
    if isinstance(failure, DecoderStopped):
        return RequestError(503, f"model '{model}' cannot decode: {failure}", code="model_not_ready")
    return RequestError(500, f"generation failed: {failure}", code="generation_failed")


class RequestRun:
    """The prompts of one request in the running batch: their text as it comes, then their results.

    Choice ``c`` of prompt ``p`` is sample ``c`` of its ticket (greedy decoding runs one sample and repeats it
    ``n`` times), or under ``permute_options`` the one sample of its ``c``-th ticket (``tickets`` hold each
    prompt's in order). The text a completion streams is exactly the text it ends with (stop sequences cut
    before they are sent)."""

    def __init__(self, scheduler: Engine, jobs: list[PromptJob], tickets: list[Ticket], settings: GenerationSettings,
                 events: asyncio.Queue):
        self.scheduler, self.jobs, self.tickets = scheduler, jobs, tickets
        self.settings, self._events = settings, events
        n = settings.n
        # Each ticket's prompt, first choice and how many choices it gives: one per sample, or every choice when
        # it is one greedy sample repeated.
        self._place: dict = {}
        self._tickets_of: list[list[Ticket]] = [[] for _ in jobs]
        remaining = iter(tickets)
        for prompt, job in enumerate(jobs):
            for first in range(n) if job.orders else (0,):
                ticket = next(remaining)
                span = 1 if job.orders or ticket.job.samples > 1 else n
                self._place[ticket.job.key] = (prompt, first, span)
                self._tickets_of[prompt].append(ticket)
        self.texts = [[""] * n for _ in jobs]
        self.tokens = [[0] * n for _ in jobs]
        self.token_ids: list[list[list[int]]] = [[[] for _ in range(n)] for _ in jobs]
        self.logprobs: list[list[list[TokenLogprob]]] = [[[] for _ in range(n)] for _ in jobs]
        self.prompt_logprobs: list[list[TokenLogprob | None] | None] = [None] * len(jobs)
        self.finish_reasons: list[list[str | None]] = [[None] * n for _ in jobs]
        self._unfinished = sum(ticket.job.samples for ticket in tickets)

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [tickets[0].job.prompt_ids for tickets in self._tickets_of]

    @property
    def finished(self) -> bool:
        """Whether every choice of every prompt has ended."""
        return all(reason is not None for reasons in self.finish_reasons for reason in reasons)

    async def stream(self) -> AsyncIterator[tuple[int, int, Delta]]:
        """``(prompt, choice, delta)`` as decoded; raises what failed the batch's step."""
        while self._unfinished:
            event = await self._events.get()
            if isinstance(event, Exception):
                self._unfinished = 0
                raise event
            prompt, first, span = self._place[event.key]
            if event.prompt_logprobs is not None:
                self.prompt_logprobs[prompt] = event.prompt_logprobs
            for choice in range(first, first + span) if span > 1 else (first + event.sample,):
                self.texts[prompt][choice] += event.text
                self.tokens[prompt][choice] = event.tokens
                if event.token is not None:  # (None: a stop string ended it without a new token)
                    self.token_ids[prompt][choice].append(event.token)
                if event.logprob is not None:
                    self.logprobs[prompt][choice].append(event.logprob)
                self.finish_reasons[prompt][choice] = event.finish_reason
                yield prompt, choice, event
            if event.finish_reason is not None:
                self._unfinished -= 1

    def close(self) -> None:
        """Stop what is still decoding or waiting (the client went away)."""
        if self._unfinished:
            self.scheduler.cancel(self.tickets)
            self._unfinished = 0

    def result(self, prompt: int) -> JobResult:
        job = self.jobs[prompt]
        options, orders = job.options, job.orders
        letters = "".join(options)
        scored = self.settings.job.logprobs is not None
        completions = []
        for choice, (text, tokens, finish, ids, logprobs) in enumerate(zip(
                self.texts[prompt], self.tokens[prompt], self.finish_reasons[prompt], self.token_ids[prompt], self.logprobs[prompt])):
            completion = Completion(text=text, tokens=tokens, finish_reason=finish, token_ids=ids,
                                    logprobs=logprobs if scored else None)
            if orders:  # read against the options as this sample saw them, then in the question's letters
                shown = extract_answer(text, letters, mode="lenient", options=shown_options(options, orders[choice]))
                completion.shown_answer, completion.answer = shown, original_letter(shown, letters, orders[choice])
            elif options:
                completion.answer = extract_answer(text, letters, mode="lenient", options=options)
            completions.append(completion)
        tickets = self._tickets_of[prompt]
        return JobResult(completions=completions, prompt_tokens=sum(len(t.job.prompt_ids) for t in tickets), options=options,
                         prompt_ids=tickets[0].job.prompt_ids, prompt_logprobs=self.prompt_logprobs[prompt], orders=orders,
                         permutation_seed=self.settings.permutation_seed if orders else None)

    def results(self) -> list[JobResult]:
        return [self.result(prompt) for prompt in range(len(self.jobs))]
