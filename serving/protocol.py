"""What a request asks, checked where its schema (vLLM's pydantic types, KServe's v2 types) cannot check it.

The OpenAI routes are KServe's, their request and response types vLLM's: they parse and type-check every
field. Here: the fields neither engine honours (refused naming the field, never ignored), the server's
limits (``n``, ``max_tokens``, log-probabilities, prompts per request, body size), the ``medssr`` vote
extension, and the translation into the engine contract's settings. vLLM's own ``SamplingParams`` checks the
ranges (temperature, top_p, penalties, stop sequences) for both engines. Every bad request becomes a
``RequestError`` naming the offending field, answered as a 4xx; nothing a client sends should reach the
model unchecked or surface as a 500.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medssr.answers import option_orders
from medssr.data import LETTERS, MCQItem, options_in_text, parse_question_text
from medssr.generation.base import Prompt, SamplingParams
from medssr.generation.step_decoder import DecodeJob
from medssr.prompts import build_messages, shown_item
from medssr.serving.config import ServeConfig
from medssr.serving.metrics import REJECTED

EXTENSION = "medssr"  # the request and reply field of what OpenAI's schema has no place for
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs and vLLM's default max_logprobs
MAX_LOGIT_BIAS = 100.0  # OpenAI's bound
MAX_SEED = 2**63  # sampling seeds stay below it (vLLM's bound), a permuted sample's too
UNION_MEMBERS = {"str", "int", "float", "bool", "dict", "list"}  # how pydantic names a union's members in an error's loc
CHAT_ROLES = ("system", "developer", "user", "assistant")
# The request fields both engines honour (the rest of vLLM's schema, sent with a value other than its default,
# is refused): OpenAI's sampling fields, and vLLM's top_k and min_tokens. Identity fields are read and dropped.
HONOURED = {"model", "prompt", "messages", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
            "max_tokens", "max_completion_tokens", "n", "seed", "stop", "stream", "stream_options", "temperature", "top_p",
            "top_k", "min_tokens", "user", "request_id", "parallel_tool_calls"}


class RequestError(Exception):
    """An error answered to the client: HTTP status, a message (naming the field of a bad request), and
    OpenAI's error ``type``/``code``. Mostly 4xx; 5xx where the server cannot decode (``decode_error``)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def error_type(self) -> str:
        if self.status >= 500:
            return "server_error"
        return {404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(
            self.status, "invalid_request_error"
        )

    def openai_body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    @classmethod
    def invalid(cls, errors: list[dict], prefix: str = "") -> RequestError:
        """A 400 naming the first field a schema refused (pydantic's or FastAPI's list of errors)."""
        # Of a union's errors (one per member) the one that is not "not this type" says most.
        first = next((e for e in errors if not e["type"].endswith("_type")), errors[0]) if errors else {
            "loc": (), "msg": "the request does not fit its schema", "type": ""}
        loc = [str(part) for part in ((prefix,) if prefix else ()) + tuple(first["loc"])]
        where = ".".join(part for part in loc if part != "body" and "[" not in part and part not in UNION_MEMBERS)
        kind = first.get("type", "")
        code = ("invalid_json" if kind == "json_invalid" or not where else "missing_field" if kind == "missing"
                else "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value")
        return cls(400, f"'{where}': {first['msg']}" if where else f"request body: {first['msg']}", param=where or None, code=code)

    @classmethod
    def from_vllm(cls, error) -> RequestError:
        """A 400 of one of vLLM's checks (``VLLMValidationError``: a message and the parameter it concerns, which
        some checks leave out but name first: "min_tokens must be ...")."""
        message = str(error.args[0])
        first = message.split(" ", 1)[0].strip("`")
        param = error.parameter or (first if first.isidentifier() and first.islower() else None)
        return cls(400, message, param=param, code="invalid_value")


@dataclass(frozen=True)
class GenerationSettings:
    """How every prompt of one request is sampled (``job``: the engine's job, its key and prompt left to fill
    in), how many choices it answers, the agreement below which its vote abstains, and whether each choice
    sees the options in its own order (``permutation_seed`` is None when not)."""

    n: int
    job: DecodeJob
    abstain_below: float | None = None
    echo: bool = False
    echo_only: bool = False  # echo with max_tokens 0: the prompt alone
    permutation_seed: int | None = None

    def sample_job(self, choice: int, orders: tuple) -> DecodeJob:
        """The engine's job for choice ``choice`` of a prompt with option ``orders`` (one per choice; none: one job
        gives every choice). A permuted choice is a prompt of its own, sampled once; a seeded request's choices
        draw from seed + choice, as an unpermuted prompt's samples draw apart."""
        if not orders:
            return self.job
        sampling = self.job.sampling
        if sampling.seed is not None:
            sampling = replace(sampling, seed=(sampling.seed + choice) % MAX_SEED)
        return replace(self.job, samples=1, sampling=sampling)


@dataclass
class PromptJob:
    """One prompt to complete (text, chat messages or token ids), and the answer letters of its question
    when it is multiple-choice. ``question`` is that question as the server reads it (stem and options:
    what it can re-order), and ``orders`` the option order each choice sees under ``permute_options``."""

    prompt: Prompt | list[int]
    options: dict[str, str] = field(default_factory=dict)
    question: MCQItem | None = None
    orders: tuple[tuple[str, ...], ...] = ()

    @property
    def is_tokens(self) -> bool:
        return isinstance(self.prompt, list) and bool(self.prompt) and isinstance(self.prompt[0], int)

    def engine_prompts(self) -> list[Prompt | list[int]]:
        """What the engine decodes: the prompt, or one per choice with the question's options in its order
        (:func:`medssr.prompts.shown_item` rendered as labelling renders it, in place of the question)."""
        if not self.orders:
            return [self.prompt]
        shown = [shown_item(self.question, order).render() for order in self.orders]
        if isinstance(self.prompt, str):
            return shown
        last = max(index for index, message in enumerate(self.prompt) if message["role"] == "user")
        return [[*self.prompt[:last], {**self.prompt[last], "content": text}, *self.prompt[last + 1:]] for text in shown]


class VoteExtension(BaseModel):
    """The ``medssr`` request extension: ``n`` samples to vote over (as top-level ``n``), the agreement
    below which the reply abstains, and whether each sample sees the options in its own order."""

    model_config = ConfigDict(extra="forbid")
    n: int | None = Field(None, ge=1)
    abstain_below: float | None = Field(None, ge=0.0, le=1.0)
    permute_options: bool = Field(False, description=(
        "Each sample is asked the question with its options in its own order (medssr.answers.option_orders: every "
        "option at every position as evenly as n allows) and its letter is mapped back to the question's before "
        "the vote, as labelling's permute_options does."))
    permutation_seed: int = Field(0, ge=0, lt=MAX_SEED, description="Seed of the option orders (with the question's text).")


class BodyLimitMiddleware:
    """ASGI middleware refusing a request body over ``max_bytes`` with 413 before any route reads it.

    Every route (OpenAI, KServe v1/v2) is covered: a declared Content-Length over the limit is refused
    without reading a byte; a body sent without one (chunked) is read here up to the limit, then
    handed on whole, or refused as soon as it passes the limit.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(scope, send, f"request body is {int(declared)} bytes; the limit is {self.max_bytes}")
                return
            await self.app(scope, receive, send)  # the server stops the body at its declared length
            return
        if headers.get(b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away mid-body
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, send, f"request body passed the limit of {self.max_bytes} bytes")
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # later calls wait for the disconnect, as the server's would
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, send, message: str) -> None:
        REJECTED.labels(reason="body_too_large").inc()
        error = RequestError(413, message, code="body_too_large")
        content = error.openai_body() if scope["path"].startswith("/openai/") else {"error": error.message}
        payload = json.dumps(content).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def settings_from_request(request, config: ServeConfig) -> GenerationSettings:
    """The engine contract's settings of a vLLM ``CompletionRequest`` or ``ChatCompletionRequest`` (also what
    KServe v1/v2 ``parameters`` are read as); unset sampling fields take the server's defaults."""
    from vllm.exceptions import VLLMValidationError

    chat = hasattr(request, "messages")
    defaults = type(request).model_fields
    honoured = HONOURED | ({"echo"} if not chat else set())
    for name in [name for name in defaults if name in request.model_fields_set and name not in honoured]:
        if getattr(request, name) != defaults[name].get_default(call_default_factory=True):
            raise RequestError(400, f"'{name}' is not supported by this server", param=name, code="unsupported")
    vote = _vote_extension(request)
    n = vote.n or request.n
    limited = {"n": (n, config.max_n), "logprobs": (request.top_logprobs if chat else request.logprobs, MAX_LOGPROBS)}
    max_tokens = (request.max_completion_tokens or request.max_tokens) if chat else request.max_tokens
    echo_only = not chat and request.echo and max_tokens == 0
    max_tokens = config.default_max_tokens if max_tokens is None or echo_only else max_tokens
    limited["max_tokens"] = (max_tokens, config.max_tokens_limit)
    for name, (value, limit) in limited.items():
        if value is not None and value > limit:
            raise RequestError(400, f"'{name}' is {value}; this server allows at most {limit}", param=name,
                               code="limit_exceeded")
    outside = next((bias for bias in (request.logit_bias or {}).values() if abs(bias) > MAX_LOGIT_BIAS), None)
    if outside is not None:
        raise RequestError(400, f"'logit_bias' values must be in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}], got {outside:g}",
                           param="logit_bias", code="invalid_value")
    if n < 1:
        raise RequestError(400, f"'n' must be at least 1, got {n}", param="n", code="invalid_value")
    try:  # vLLM's checks of the ranges and combinations, the same for both engines; n is ours (greedy: one
        # sample repeated n times, where vLLM refuses n > 1)
        params = request.model_copy(update={"n": 1}).to_sampling_params(
            max_tokens, {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k})
    except VLLMValidationError as exc:
        raise RequestError.from_vllm(exc) from None
    sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p, top_k=max(params.top_k, 0),
                              max_tokens=params.max_tokens, seed=params.seed)
    job = DecodeJob(key=None, prompt_ids=[], samples=1 if sampling.temperature == 0 else n, sampling=sampling,
                    min_tokens=params.min_tokens, stop=tuple(params.stop or ()),
                    logit_bias={int(token): float(bias) for token, bias in (params.logit_bias or {}).items()},
                    presence_penalty=params.presence_penalty, frequency_penalty=params.frequency_penalty,
                    logprobs=params.logprobs, prompt_logprobs=params.prompt_logprobs)
    echo = bool(not chat and request.echo)
    if vote.permute_options and echo:
        raise RequestError(400, f"'echo' cannot be combined with '{EXTENSION}.permute_options': each sample reads its own "
                                "prompt", param="echo", code="invalid_value")
    return GenerationSettings(n=n, job=job, abstain_below=vote.abstain_below, echo=echo, echo_only=bool(echo_only),
                              permutation_seed=vote.permutation_seed if vote.permute_options else None)


def parameters_request(parameters: dict[str, Any]):
    """KServe v1/v2 ``parameters`` read as the sampling fields of a completion request (vLLM's schema; the
    instances are the prompts, the one here only completes the schema)."""
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.exceptions import VLLMValidationError

    try:
        return CompletionRequest.model_validate({**parameters, "prompt": "instances"})
    except ValidationError as error:
        raise RequestError.invalid(error.errors()) from None
    except VLLMValidationError as error:
        raise RequestError.from_vllm(error) from None


def _vote_extension(request) -> VoteExtension:
    extension = (request.model_extra or {}).get(EXTENSION)
    if extension is None:
        return VoteExtension()
    try:
        vote = VoteExtension.model_validate(extension)
    except ValidationError as error:
        raise RequestError.invalid(error.errors(), prefix=EXTENSION) from None
    if vote.n is not None and "n" in request.model_fields_set and request.n != vote.n:
        raise RequestError(400, f"'n' ({request.n}) and '{EXTENSION}.n' ({vote.n}) disagree; send one of them",
                           param=f"{EXTENSION}.n", code="invalid_value")
    if "permutation_seed" in vote.model_fields_set and not vote.permute_options:
        raise RequestError(400, f"'{EXTENSION}.permutation_seed' needs '{EXTENSION}.permute_options': true",
                           param=f"{EXTENSION}.permutation_seed", code="invalid_value")
    return vote


def permuted_jobs(jobs: list[PromptJob], settings: GenerationSettings, param: str) -> list[PromptJob]:
    """The jobs with each choice's option order (:func:`medssr.answers.option_orders`, seeded by the request's
    ``permutation_seed`` and the question's text) when the request asks ``permute_options``; a 400 naming the
    field when a prompt holds no question the server can re-order."""
    if settings.permutation_seed is None:
        return jobs
    permuted = []
    for index, job in enumerate(jobs):
        if job.question is None:
            where = param if len(jobs) == 1 else f"{param}[{index}]"
            raise RequestError(
                400, f"'{EXTENSION}.permute_options' needs a multiple-choice question to re-order, and '{where}' holds "
                     f"none: send the question's text followed by one 'A. ...' line per option (in chat, as the last user "
                     f"message), or a KServe v1 instance with 'question' and 'options'",
                param=f"{EXTENSION}.permute_options", code="invalid_value")
        question = job.question
        orders = option_orders(question.letters, settings.n, settings.permutation_seed, question.render())
        permuted.append(replace(job, options=dict(question.options), orders=tuple(orders)))
    return permuted


def question_in_text(text: str) -> MCQItem | None:
    """The multiple-choice question a prompt's text holds (the text, then the ``A. ...`` option lines that end
    it), or None."""
    try:
        stem, options = parse_question_text(text)
        return MCQItem(id="request", stem=stem, options=options)
    except ValueError:  # (pydantic's ValidationError is one)
        return None


def require_unicode_text(jobs: list[PromptJob], param: str) -> None:
    """Refuse prompt text that is not valid Unicode (JSON and pydantic let "\\ud800", a lone surrogate, through)."""
    for index, job in enumerate(jobs):
        if job.is_tokens:
            continue
        texts = [job.prompt] if isinstance(job.prompt, str) else [message["content"] for message in job.prompt]
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                where = param if len(jobs) == 1 else f"{param}[{index}]"
                raise RequestError(
                    400, f"'{where}' is not valid Unicode text: a lone surrogate {text[exc.start]!r} at character {exc.start}",
                    param=where, code="invalid_value",
                ) from None


def chat_job(messages: list) -> PromptJob:
    """Chat messages (vLLM's parsed ``messages``) as text turns; what is not text (images, tool calls) is refused."""
    parsed = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise RequestError(400, f"'{where}.role' must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}",
                               param=f"{where}.role", code="invalid_value")
        if message.get("tool_calls"):
            raise RequestError(400, f"'{where}.tool_calls' is not supported by this server", param=f"{where}.tool_calls",
                               code="unsupported")
        parsed.append({"role": role, "content": _message_text(message.get("content"), f"{where}.content")})
    if not parsed:
        raise RequestError(400, "'messages' must not be empty", param="messages", code="invalid_value")
    last_user = next((m["content"] for m in reversed(parsed) if m["role"] == "user"), "")
    return PromptJob(prompt=parsed, options=options_in_text(last_user), question=question_in_text(last_user))


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    # The content-parts form: [{"type": "text", "text": "..."}]; only text parts make sense here.
    if isinstance(content, list) and content and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "".join(part["text"] for part in content)
    raise RequestError(400, f"'{where}' must be a string or a list of text parts", param=where, code="invalid_type")


def completion_jobs(prompt: Any) -> list[PromptJob]:
    """OpenAI's prompt forms (vLLM's parsed ``prompt``): a string, strings, token ids, or lists of token ids."""
    if prompt is None:
        raise RequestError(400, "missing required field 'prompt'", param="prompt", code="missing_field")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (int, list)):
        lists = prompt if isinstance(prompt[0], list) else [prompt]
        if not all(lists):
            raise RequestError(400, "'prompt' has an empty list of token ids", param="prompt", code="invalid_value")
        return [PromptJob(prompt=list(ids)) for ids in lists]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not prompts or not all(p.strip() for p in prompts):
        raise RequestError(400, "'prompt' must be non-empty text", param="prompt", code="invalid_value")
    return [PromptJob(prompt=text, options=options_in_text(text), question=question_in_text(text)) for text in prompts]


def instance_job(instance: Any, index: int) -> PromptJob:
    """One KServe v1 instance: {"prompt": str} | {"messages": [...]} | {"question": str, "options": {...}}."""
    where = f"instances[{index}]"
    if isinstance(instance, str):
        instance = {"prompt": instance}
    if not isinstance(instance, dict):
        raise RequestError(400, f"'{where}' must be an object with 'prompt', 'messages' or 'question'", param=where,
                           code="invalid_type")
    if "question" in instance:
        return _question_job(instance, where)
    if "messages" in instance:
        messages = instance["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise RequestError(400, f"'{where}.messages' must be a list of messages", param=f"{where}.messages",
                               code="invalid_type")
        return chat_job(messages)
    if "prompt" in instance:
        prompt = instance["prompt"]
        if not isinstance(prompt, str):
            raise RequestError(400, f"'{where}.prompt' must be a string", param=f"{where}.prompt", code="invalid_type")
        return completion_jobs(prompt)[0]
    raise RequestError(400, f"'{where}' needs one of the fields 'prompt', 'messages' or 'question'", param=where,
                       code="missing_field")


def _question_job(instance: dict, where: str) -> PromptJob:
    question = instance["question"]
    if not isinstance(question, str) or not question.strip():
        raise RequestError(400, f"'{where}.question' must be a non-empty string", param=f"{where}.question",
                           code="invalid_type")
    options = instance.get("options")
    if options is None:
        stem, options = parse_question_text(question) if options_in_text(question) else (question, {})
        if not options:
            raise RequestError(400, f"'{where}.options' is missing and the question has no 'A. ...' option lines",
                               param=f"{where}.options", code="missing_field")
    else:
        stem = question
        if isinstance(options, list):  # ["first", "second", ...] -> A, B, ...
            options = dict(zip(LETTERS, options))
    try:
        item = MCQItem(id="request", stem=stem, options=options)
    except ValidationError as exc:
        error = exc.errors()[0]
        message = error["msg"].removeprefix("Value error, ")
        raise RequestError(400, f"'{where}.options' is invalid: {message}", param=f"{where}.options",
                           code="invalid_value") from None
    return PromptJob(prompt=build_messages(item), options=dict(item.options), question=item)
