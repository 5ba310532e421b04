"""The KServe predictor: a Hugging Face causal LM behind the v1 and v2 protocols, decoded step by step.

One ``submit()`` coroutine serves every route (v1, v2 and the OpenAI-compatible ones): it checks the
prompt against the token limits (tokenizing off the event loop) and queues it on the scheduler, which
admits it into the running batch at the next decode step. The returned :class:`RequestRun` yields the
text as it is decoded (the streaming routes) and, once every sample has ended, the results, with the
letter a multiple-choice question's completions chose read by :mod:`medssr.answers` and voted on.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from medssr.serving.kserve_import import import_kserve

import_kserve()  # before the first `from kserve import ...`

from kserve import Model  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

from medssr.answers import extract_answer, majority_vote  # noqa: E402
from medssr.generation.base import Prompt  # noqa: E402
from medssr.generation.step_decoder import DecodeJob, Delta, StepDecoder, TokenLogprob  # noqa: E402
from medssr.serving.config import ServeConfig  # noqa: E402
from medssr.serving.metrics import PROMPT_TOKENS, REJECTED  # noqa: E402
from medssr.serving.protocol import (  # noqa: E402
    GenerationSettings,
    PromptJob,
    RequestError,
    completion_jobs,
    instance_job,
    parse_settings,
    require_unicode_text,
)
from medssr.serving.scheduler import DecodeFailed, DecodeScheduler, DecoderStopped, QueueFull, Ticket  # noqa: E402

V2_TEXT_INPUTS = ("text_input", "prompt", "input")
@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    answer: str | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class JobResult:
    """The completions of one prompt, its token count, and the question's letters when multiple-choice."""

    completions: list[Completion]
    prompt_tokens: int
    options: dict[str, str] = field(default_factory=dict)
    prompt_ids: list[int] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None

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
        and ``majority`` still names the letter.
        """
        if not self.options:
            return None
        answers = [c.answer for c in self.completions]
        vote = majority_vote(answers)
        summary = {"answer": vote.label, "majority": vote.label, "agreement": vote.agreement, "votes": vote.votes,
                   "parsed": vote.parsed, "letters": self.letters, "answers": answers}
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

    Choice ``c`` of prompt ``p`` is sample ``c`` (greedy decoding runs one sample and repeats it ``n``
    times). The text a completion streams is exactly the text it ends with (stop sequences cut before
    they are sent)."""

    def __init__(self, scheduler: DecodeScheduler, jobs: list[PromptJob], tickets: list[Ticket], settings: GenerationSettings,
                 events: asyncio.Queue):
        self.scheduler, self.jobs, self.tickets = scheduler, jobs, tickets
        self.settings, self._events = settings, events
        self._prompt_of = {ticket.job.key: index for index, ticket in enumerate(tickets)}
        self._greedy = settings.sampling.temperature == 0
        n = settings.n
        self.texts = [[""] * n for _ in jobs]
        self.tokens = [[0] * n for _ in jobs]
        self.token_ids: list[list[list[int]]] = [[[] for _ in range(n)] for _ in jobs]
        self.logprobs: list[list[list[TokenLogprob]]] = [[[] for _ in range(n)] for _ in jobs]
        self.prompt_logprobs: list[list[TokenLogprob | None] | None] = [None] * len(jobs)
        self.finish_reasons: list[list[str | None]] = [[None] * n for _ in jobs]
        self._unfinished = sum(ticket.job.samples for ticket in tickets)

    @property
    def prompt_ids(self) -> list[list[int]]:
        return [ticket.job.prompt_ids for ticket in self.tickets]

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
            prompt = self._prompt_of[event.key]
            if event.prompt_logprobs is not None:
                self.prompt_logprobs[prompt] = event.prompt_logprobs
            for choice in range(self.settings.n) if self._greedy else (event.sample,):
                self.texts[prompt][choice] += event.text
                self.tokens[prompt][choice] = event.tokens
                if event.token is not None:
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
        options = self.jobs[prompt].options
        letters = "".join(options)
        scored = self.settings.logprobs is not None
        completions = [
            Completion(text=text, tokens=tokens, finish_reason=finish,
                       answer=extract_answer(text, letters, mode="lenient", options=options) if options else None,
                       token_ids=ids, logprobs=logprobs if scored else None)
            for text, tokens, finish, ids, logprobs in zip(self.texts[prompt], self.tokens[prompt], self.finish_reasons[prompt],
                                                           self.token_ids[prompt], self.logprobs[prompt])
        ]
        ids = self.tickets[prompt].job.prompt_ids
        return JobResult(completions=completions, prompt_tokens=len(ids), options=options, prompt_ids=ids,
                         prompt_logprobs=self.prompt_logprobs[prompt])

    def results(self) -> list[JobResult]:
        return [self.result(prompt) for prompt in range(len(self.jobs))]



class MedssrPredictor(Model):
    """A ``kserve.Model`` serving one causal LM folder; ``ready`` once the weights are loaded."""

    def __init__(self, config: ServeConfig):
        super().__init__(config.name)
        self.config = config
        self.tokenizer = None
        self.generator = None
        self.scheduler: DecodeScheduler | None = None
        self.context_window: int | None = None
        self.vocab_size: int | None = None

    @property
    def ready(self) -> bool:
        """Loaded, and its decode thread alive: a server whose thread died fails its readiness probe."""
        return self._loaded and (self.scheduler is None or self.scheduler.failure is None)

    @ready.setter
    def ready(self, loaded: bool) -> None:  # kserve.Model sets it on load and stop
        self._loaded = loaded

    def load(self) -> bool:
        from transformers import AutoConfig, AutoTokenizer

        from medssr.errors import UserError
        from medssr.generation import GeneratorConfig, build_generator
        from medssr.models import resolve_model

        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        path = resolve_model(self.config.model)
        trust = self.config.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        # A folder without tokenizer files still loads an empty tokenizer; refuse it here, not at every request.
        if not self.tokenizer.encode("The answer is", add_special_tokens=False):
            raise UserError(f"{path}: the model has no usable tokenizer (it encodes text to no tokens); "
                            "save the tokenizer files beside the weights")
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        self.context_window = getattr(model_config, "max_position_embeddings", None)
        self.vocab_size = model_config.get_text_config().vocab_size
        self.generator = build_generator(
            GeneratorConfig(
                backend="transformers",
                model=path,
                batch_size=self.config.max_rows,
                device=self.config.device,
                dtype=self.config.dtype,
                trust_remote_code=trust,
                progress=False,
            )
        )
        self.scheduler = DecodeScheduler(
            StepDecoder(self.generator, self.config.max_rows), self.config.max_batch_size, self.config.max_queue,
            self.config.admission, self.config.max_wait_ms,
        )
        self.ready = True
        return self.ready

    def stop(self):
        if self.scheduler is not None:
            self.scheduler.close()
        super().stop()

    # ------------------------------------------------------------------------------------ generation

    def encode_prompt(self, prompt: Prompt | list[int]) -> list[int]:
        """The token ids the model reads: token ids as sent, text as the tokenizer encodes it, a chat prompt
        through the tokenizer's template (a ``developer`` message is the template's ``system`` one, as
        OpenAI treats it for models without that role), as the transformers backend encodes it."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        if isinstance(prompt[0], int):
            return list(prompt)
        if not self.tokenizer.chat_template:
            raise RequestError(400, f"model '{self.name}' has no chat template; use /openai/v1/completions",
                               param="messages", code="unsupported")
        messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in prompt]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _check_token_ids(self, ids: list[int], param: str) -> None:
        """Token ids from the client (a token prompt, logit_bias keys) must name rows of the model's vocabulary."""
        outside = next((token for token in ids if not 0 <= token < self.vocab_size), None)
        if outside is not None:
            raise RequestError(400, f"'{param}' has token id {outside}; this model's vocabulary has ids 0 to "
                                    f"{self.vocab_size - 1}", param=param, code="invalid_value")

    def _check_length(self, tokens: int, settings: GenerationSettings, param: str) -> None:
        limit = self.config.max_prompt_tokens
        if tokens > limit:
            REJECTED.labels(reason="prompt_too_long").inc()
            raise RequestError(400, f"the prompt has {tokens} tokens; this server accepts at most {limit}",
                               param=param, code="context_length_exceeded")
        window = self.context_window
        if window and tokens + settings.sampling.max_tokens > window:
            REJECTED.labels(reason="prompt_too_long").inc()
            raise RequestError(
                400,
                f"the prompt ({tokens} tokens) plus max_tokens ({settings.sampling.max_tokens}) exceeds the "
                f"model's context window of {window} tokens",
                param=param,
                code="context_length_exceeded",
            )

    async def submit(self, jobs: list[PromptJob], settings: GenerationSettings, param: str = "prompt") -> RequestRun:
        """Queue every job of one request for the running batch; RequestError on any client error (429 when
        the queue is full)."""
        if len(jobs) > self.config.max_queue:
            raise RequestError(400, f"{len(jobs)} prompts in one request; this server takes at most "
                                    f"{self.config.max_queue}", param=param, code="limit_exceeded")
        require_unicode_text(jobs, param)
        self._check_token_ids(list(settings.logit_bias), "logit_bias")
        # A prompt near the body limit takes a while to tokenize: never on the event loop, which must keep
        # answering health probes and other requests meanwhile.
        encoded = await asyncio.to_thread(lambda: [self.encode_prompt(job.prompt) for job in jobs])
        for job, ids in zip(jobs, encoded):
            if job.is_tokens:
                self._check_token_ids(ids, param)
            self._check_length(len(ids), settings, param)
        samples = 1 if settings.sampling.temperature == 0 else settings.n
        decode_jobs = [
            DecodeJob(key=self.scheduler.new_key(), prompt_ids=ids, samples=samples, sampling=settings.sampling,
                      min_tokens=settings.min_tokens, stop=settings.stop, logit_bias=settings.logit_bias,
                      presence_penalty=settings.presence_penalty, frequency_penalty=settings.frequency_penalty,
                      logprobs=settings.logprobs, prompt_logprobs=settings.prompt_logprobs)
            for ids in encoded
        ]
        events: asyncio.Queue = asyncio.Queue()
        try:
            tickets = self.scheduler.submit(decode_jobs, events)
        except QueueFull as exc:
            REJECTED.labels(reason="queue_full").inc()
            raise RequestError(429, f"server is at capacity: {exc}; retry later", code="server_overloaded") from None
        except DecoderStopped as exc:
            raise decode_error(self.name, exc) from None
        PROMPT_TOKENS.inc(sum(map(len, encoded)))
        return RequestRun(self.scheduler, jobs, tickets, settings, events)

    async def complete(self, jobs: list[PromptJob], settings: GenerationSettings, param: str = "prompt") -> list[JobResult]:
        """Every job's completions, once all have ended (a cancelled caller stops them)."""
        run = await self.submit(jobs, settings, param)
        try:
            async for _ in run.stream():
                pass
        except DecodeFailed as failure:
            raise decode_error(self.name, failure) from failure
        finally:
            run.close()
        return run.results()

    # -------------------------------------------------------------------------------- KServe protocols

    def get_input_types(self) -> list[dict]:
        """The v2 metadata of the tensors ``infer`` reads: the prompts (any of these names; one is enough)."""
        return [{"name": name, "datatype": "BYTES", "shape": [-1]} for name in V2_TEXT_INPUTS]

    def get_output_types(self) -> list[dict]:
        return [{"name": "text_output", "datatype": "BYTES", "shape": [-1]},
                {"name": "answer", "datatype": "BYTES", "shape": [-1]},
                {"name": "completion_tokens", "datatype": "INT64", "shape": [-1]}]

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None, response_headers=None):
        if isinstance(payload, InferRequest):
            return await self._predict_v2(payload)
        return await self._predict_v1(payload)

    async def _predict_v1(self, payload: Any) -> dict:
        if not isinstance(payload, dict):
            raise RequestError(400, "request body must be a JSON object with 'instances'", code="invalid_json")
        instances = payload.get("instances")
        if instances is None:
            raise RequestError(400, "missing required field 'instances'", param="instances", code="missing_field")
        if not isinstance(instances, list) or not instances:
            raise RequestError(400, "'instances' must be a non-empty list", param="instances", code="invalid_type")
        parameters = payload.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise RequestError(400, "'parameters' must be an object", param="parameters", code="invalid_type")
        settings = parse_settings(parameters, self.config)
        jobs = [instance_job(instance, index) for index, instance in enumerate(instances)]
        results = await self.complete(jobs, settings, param="instances")
        return {"predictions": [self._prediction(result, settings.abstain_below) for result in results]}

    @staticmethod
    def _prediction(result: JobResult, abstain_below: float | None) -> dict:
        prediction: dict[str, Any] = {
            "text": result.completions[0].text,
            "finish_reason": result.completions[0].finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        if len(result.completions) > 1:
            prediction["texts"] = [c.text for c in result.completions]
        summary = result.answer_summary(abstain_below)
        if summary:
            prediction.update(summary)
        return prediction

    async def _predict_v2(self, request: InferRequest) -> InferResponse:
        text_input = next((i for i in request.inputs if i.name in V2_TEXT_INPUTS), None)
        if text_input is None:
            names = ", ".join(i.name for i in request.inputs) or "none"
            raise RequestError(400, f"no text input: send a BYTES tensor named one of {', '.join(V2_TEXT_INPUTS)} "
                                    f"(got {names})", param="inputs", code="missing_field")
        if text_input.datatype != "BYTES":
            raise RequestError(400, f"input '{text_input.name}' must have datatype BYTES, got {text_input.datatype}",
                               param=text_input.name, code="invalid_type")
        prompts = _flatten_strings(text_input.data)
        if not prompts or not all(p.strip() for p in prompts):
            raise RequestError(400, f"input '{text_input.name}' must hold non-empty strings", param=text_input.name,
                               code="invalid_value")
        parameters = {k: _plain(v) for k, v in (request.parameters or {}).items()}
        if "n" in parameters:
            raise RequestError(400, "'n' is not supported on the v2 protocol; use /openai/v1/completions",
                               param="n", code="unsupported")
        settings = parse_settings(parameters, self.config)
        results = await self.complete(completion_jobs({"prompt": prompts}), settings, param=text_input.name)
        count = len(results)
        outputs = [
            InferOutput("text_output", [count], "BYTES", [r.completions[0].text for r in results]),
            InferOutput("answer", [count], "BYTES", [(r.answer_summary() or {}).get("answer") or "" for r in results]),
            InferOutput("completion_tokens", [count], "INT64", [r.completion_tokens for r in results]),
        ]
        return InferResponse(response_id=request.id or uuid.uuid4().hex, model_name=self.name, infer_outputs=outputs)


def _flatten_strings(data: Any) -> list[str]:
    if isinstance(data, (str, bytes)):
        data = [data]
    flat: list[str] = []
    for item in data or []:
        if isinstance(item, (list, tuple)):
            flat.extend(_flatten_strings(item))
        elif isinstance(item, bytes):
            flat.append(item.decode("utf-8", errors="replace"))
        elif isinstance(item, str):
            flat.append(item)
        else:
            raise RequestError(400, f"text inputs must be strings, got {type(item).__name__}", param="inputs",
                               code="invalid_type")
    return flat


def _plain(value: Any) -> Any:
    """A v2 request parameter as a plain value (gRPC wraps them in InferParameter messages)."""
    for attribute in ("int64_param", "double_param", "string_param", "bool_param"):
        if hasattr(value, "HasField") and value.HasField(attribute):
            return getattr(value, attribute)
    return value
