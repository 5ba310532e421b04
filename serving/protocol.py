"""Request validation shared by the OpenAI-compatible routes and the KServe v1/v2 handlers.

Every bad request becomes a ``RequestError`` naming the offending field, answered as a 4xx JSON error;
nothing a client sends should reach the model unchecked or surface as a 500.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from medssr.data import LETTERS, MIN_OPTIONS, MCQItem, parse_question_text
from medssr.generation.base import Prompt, SamplingParams
from medssr.prompts import build_messages
from medssr.serving.config import ServeConfig
from medssr.serving.metrics import REJECTED

CHAT_ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4
MAX_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs and vLLM's default max_logprobs
MAX_LOGIT_BIAS = 100.0
MAX_PENALTY = 2.0
# Request fields this server cannot honour: refused naming the field, unless they carry their neutral value.
UNSUPPORTED = {
    "tools": lambda v: not v, "functions": lambda v: not v, "tool_choice": lambda v: v in (None, "none"),
    "function_call": lambda v: v in (None, "none"), "response_format": lambda v: v in (None, {"type": "text"}),
    "suffix": lambda v: not v, "audio": lambda v: v is None, "modalities": lambda v: v in (None, ["text"]),
    "prediction": lambda v: v is None,
}
MAX_SEED = 2**64 - 1  # the largest seed torch.manual_seed takes
EXTENSION = "medssr"  # the request and reply field of what OpenAI's schema has no place for


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


@dataclass(frozen=True)
class GenerationSettings:
    """How every prompt of one request is sampled, and the agreement below which its vote abstains."""

    n: int
    sampling: SamplingParams
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    abstain_below: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # alternatives per generated token (None: no log-probabilities)
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (echo with logprobs)
    echo: bool = False


@dataclass
class PromptJob:
    """One prompt to complete (text, chat messages or token ids), and the answer letters of its question
    when it is multiple-choice."""

    prompt: Prompt | list[int]
    options: dict[str, str] = field(default_factory=dict)

    @property
    def is_tokens(self) -> bool:
        return isinstance(self.prompt, list) and bool(self.prompt) and isinstance(self.prompt[0], int)

    @property
    def letters(self) -> str:
        return "".join(self.options)


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


def parse_json_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json")
    return body


def require_model(body: dict, served_name: str) -> None:
    model = body.get("model")
    if model is None:
        raise RequestError(400, "missing required field 'model'", param="model", code="missing_field")
    if not isinstance(model, str):
        raise RequestError(400, "'model' must be a string", param="model", code="invalid_type")
    if model != served_name:
        raise RequestError(404, f"model '{model}' does not exist; this server serves '{served_name}'", param="model",
                           code="model_not_found")


def _integer(body: dict, name: str, default: int | None, low: int, high: int | None = None,
             where: str | None = None) -> int | None:
    value = body.get(name)
    name = where or name
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"'{name}' must be an integer, got {json.dumps(value)}", param=name, code="invalid_type")
    if value < low:
        raise RequestError(400, f"'{name}' must be >= {low}, got {value}", param=name, code="invalid_value")
    if high is not None and value > high:
        raise RequestError(400, f"'{name}' is {value}; this server allows at most {high}", param=name,
                           code="limit_exceeded")
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False,
            where: str | None = None) -> float:
    value = body.get(name)
    name = where or name
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(400, f"'{name}' must be a number, got {json.dumps(value)}", param=name, code="invalid_type")
    if value > high or value < low or (low_open and value == low):
        bounds = f"{'(' if low_open else '['}{low}, {high}]"
        raise RequestError(400, f"'{name}' must be in {bounds}, got {value}", param=name, code="invalid_value")
    return float(value)


def parse_settings(body: dict, config: ServeConfig, n_allowed: bool = True, chat: bool = False) -> GenerationSettings:
    """Sampling fields common to all routes; unset fields take the server's defaults. Log-probabilities are
    asked as chat asks them (``logprobs: true`` with ``top_logprobs``) or as completions do (``logprobs: N``,
    and ``echo`` for the prompt's own)."""
    for name, neutral in UNSUPPORTED.items():
        if not neutral(body.get(name)):
            raise RequestError(400, f"'{name}' is not supported by this server", param=name, code="unsupported")
    max_tokens = _integer(body, "max_completion_tokens", None, 1, config.max_tokens_limit)
    max_tokens = _integer(body, "max_tokens", max_tokens or config.default_max_tokens, 1, config.max_tokens_limit)
    n = _integer(body, "n", 1, 1, config.max_n) if n_allowed else 1
    vote = _vote_extension(body, n, config) if n_allowed else {}
    n = vote.get("n", n)
    top_k = body.get("top_k")
    if top_k == -1:  # vLLM's spelling of "no top-k"
        body = {**body, "top_k": 0}
    sampling = SamplingParams(
        temperature=_number(body, "temperature", config.temperature, 0.0, 2.0),
        top_p=_number(body, "top_p", config.top_p, 0.0, 1.0, low_open=True),
        top_k=_integer(body, "top_k", config.top_k, 0),
        max_tokens=max_tokens,
        seed=_integer(body, "seed", None, 0, MAX_SEED),
    )
    # vLLM's extension: no end-of-sequence before this many tokens (fixed-length work for benchmarks).
    min_tokens = _integer(body, "min_tokens", 0, 0, max_tokens)
    logprobs, echo = _logprobs(body, chat)
    return GenerationSettings(
        n=n, sampling=sampling, stop=_stop_sequences(body.get("stop")), min_tokens=min_tokens,
        abstain_below=vote.get("abstain_below"), logit_bias=_logit_bias(body.get("logit_bias")),
        presence_penalty=_number(body, "presence_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        logprobs=logprobs, prompt_logprobs=logprobs if echo and logprobs is not None else None, echo=echo,
    )


def _logprobs(body: dict, chat: bool) -> tuple[int | None, bool]:
    """(alternatives per token or None, echo)."""
    if chat:
        wanted = body.get("logprobs")
        if wanted is not None and not isinstance(wanted, bool):
            raise RequestError(400, f"'logprobs' must be a boolean, got {json.dumps(wanted)}", param="logprobs",
                               code="invalid_type")
        top = _integer(body, "top_logprobs", None, 0, MAX_LOGPROBS)
        if top is not None and not wanted:
            raise RequestError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs", code="invalid_value")
        return (top or 0) if wanted else None, False
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise RequestError(400, f"'echo' must be a boolean, got {json.dumps(echo)}", param="echo", code="invalid_type")
    return _integer(body, "logprobs", None, 0, MAX_LOGPROBS), echo


def _logit_bias(bias: Any) -> dict[int, float]:
    """OpenAI's ``{"token id": bias}``, bias in [-100, 100]."""
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise RequestError(400, "'logit_bias' must be an object mapping token ids to biases", param="logit_bias",
                           code="invalid_type")
    parsed = {}
    for token, value in bias.items():
        if not str(token).isdigit():
            raise RequestError(400, f"'logit_bias' key {token!r} is not a token id", param="logit_bias",
                               code="invalid_value")
        parsed[int(token)] = _number(bias, token, 0.0, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS, where=f"logit_bias.{token}")
    return parsed


VOTE_FIELDS = ("n", "abstain_below")


def _vote_extension(body: dict, n: int, config: ServeConfig) -> dict:
    """The ``medssr`` extension: ``{"n": samples to vote over, "abstain_below": agreement}``, both optional."""
    extension = body.get(EXTENSION)
    if extension is None:
        return {}
    if not isinstance(extension, dict):
        raise RequestError(400, f"'{EXTENSION}' must be an object with {' and/or '.join(VOTE_FIELDS)}", param=EXTENSION,
                           code="invalid_type")
    unknown = sorted(set(extension) - set(VOTE_FIELDS))
    if unknown:
        raise RequestError(400, f"'{EXTENSION}.{unknown[0]}' is not a field of the extension (it takes "
                                f"{', '.join(VOTE_FIELDS)})", param=f"{EXTENSION}.{unknown[0]}", code="invalid_value")
    vote = {}
    if "n" in extension:
        vote["n"] = _integer(extension, "n", None, 1, config.max_n, where=f"{EXTENSION}.n")
        if body.get("n") is not None and body["n"] != vote["n"]:
            raise RequestError(400, f"'n' ({n}) and '{EXTENSION}.n' ({vote['n']}) disagree; send one of them",
                               param=f"{EXTENSION}.n", code="invalid_value")
    if extension.get("abstain_below") is not None:
        vote["abstain_below"] = _number(extension, "abstain_below", 0.0, 0.0, 1.0, where=f"{EXTENSION}.abstain_below")
    return vote


def parse_stream(body: dict) -> tuple[bool, bool]:
    """``stream`` and ``stream_options.include_usage``, checked as OpenAI checks them."""
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(400, f"'stream' must be a boolean, got {json.dumps(stream)}", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not stream:
        raise RequestError(400, "'stream_options' is only allowed with stream=true", param="stream_options",
                           code="invalid_value")
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise RequestError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                           param="stream_options", code="invalid_type")
    return stream, options.get("include_usage", False)


def _stop_sequences(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or not all(isinstance(s, str) and s for s in sequences):
        raise RequestError(400, "'stop' must be a non-empty string or a list of them", param="stop",
                           code="invalid_type")
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise RequestError(400, f"'stop' has {len(sequences)} sequences; at most {MAX_STOP_SEQUENCES}", param="stop",
                           code="limit_exceeded")
    return tuple(sequences)


def require_unicode_text(jobs: list[PromptJob], param: str) -> None:
    """Refuse prompt text that is not valid Unicode (JSON lets "\\ud800", a lone surrogate, through)."""
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


def options_in_text(text: str) -> dict[str, str]:
    """The ``A. ...`` option lines that end a question, or {} when the text is not multiple-choice."""
    try:
        _, options = parse_question_text(text)
    except ValueError:
        return {}
    return options if len(options) >= MIN_OPTIONS else {}


def parse_messages(messages: Any, param: str = "messages") -> list[dict[str, str]]:
    if messages is None:
        raise RequestError(400, f"missing required field '{param}'", param=param, code="missing_field")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, f"'{param}' must be a non-empty list of messages", param=param, code="invalid_type")
    parsed = []
    for index, message in enumerate(messages):
        where = f"{param}[{index}]"
        if not isinstance(message, dict):
            raise RequestError(400, f"'{where}' must be an object with 'role' and 'content'", param=where,
                               code="invalid_type")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise RequestError(400, f"'{where}.role' must be one of {', '.join(CHAT_ROLES)}, got {json.dumps(role)}",
                               param=f"{where}.role", code="invalid_value")
        parsed.append({"role": role, "content": _message_text(message.get("content"), f"{where}.content")})
    if parsed[-1]["role"] == "assistant":
        raise RequestError(400, f"the last message of '{param}' must not be from the assistant", param=param,
                           code="invalid_value")
    return parsed


def _message_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    # The content-parts form: [{"type": "text", "text": "..."}]; only text parts make sense here.
    if isinstance(content, list) and content and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content
    ):
        return "".join(part["text"] for part in content)
    raise RequestError(400, f"'{where}' must be a string or a list of text parts", param=where, code="invalid_type")


def chat_job(body: dict) -> PromptJob:
    messages = parse_messages(body.get("messages"))
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return PromptJob(prompt=messages, options=options_in_text(last_user))


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def completion_jobs(body: dict) -> list[PromptJob]:
    """OpenAI's prompt forms: a string, a list of strings, a list of token ids, or a list of those lists."""
    prompt = body.get("prompt")
    if prompt is None:
        raise RequestError(400, "missing required field 'prompt'", param="prompt", code="missing_field")
    if _is_token_ids(prompt) or (isinstance(prompt, list) and prompt and all(map(_is_token_ids, prompt))):
        return [PromptJob(prompt=ids) for ids in (prompt if isinstance(prompt[0], list) else [prompt])]
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise RequestError(400, "'prompt' must be a non-empty string, a list of them, a list of token ids or a list "
                                "of such lists", param="prompt", code="invalid_type")
    return [PromptJob(prompt=text, options=options_in_text(text)) for text in prompts]


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
        return chat_job({"messages": instance["messages"]})
    if "prompt" in instance:
        return completion_jobs({"prompt": instance["prompt"]})[0]
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
    return PromptJob(prompt=build_messages(item), options=dict(item.options))
