"""OpenAI-compatible routes on the KServe model server's app, for CPU serving without vLLM.

KServe serves ``/openai/v1/...`` only through its vLLM-backed layer; these routes give the same paths
with the transformers backend. Responses follow OpenAI's schema (the official client parses them),
streamed as server-sent events with ``stream: true``. A multiple-choice question adds one extension
field, ``medssr`` (see :meth:`medssr.serving.predictor.JobResult.answer_summary`); streamed, it comes
in the last chunk. A request may send ``"medssr": {"n": ..., "abstain_below": ...}`` to vote over
samples and abstain when they agree too little. Errors use OpenAI's ``{"error": {"message", "type",
"param", "code"}}`` shape.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from medssr.generation.step_decoder import TokenLogprob
from medssr.serving.predictor import Completion, JobResult, MedssrPredictor, RequestRun, decode_error
from medssr.serving.scheduler import DecodeFailed
from medssr.serving.protocol import (
    EXTENSION,
    GenerationSettings,
    PromptJob,
    RequestError,
    chat_job,
    completion_jobs,
    parse_json_body,
    parse_settings,
    parse_stream,
    require_model,
)

OPENAI_PREFIX = "/openai/v1"
# Not sent to anyone (the client is gone); recorded in the request metrics, as nginx does.
CLIENT_CLOSED_REQUEST = 499
DISCONNECT_POLL_S = 0.1  # how soon a gone client's prompts are stopped; one cheap receive check
DONE = "data: [DONE]\n\n"


class ClientDisconnected(Exception):
    """The client closed the connection while its request waited or decoded: its prompts were stopped."""


async def unless_disconnected(request: Request, work):
    """Await ``work``, but cancel it when the client goes away, so abandoned prompts stop using the model."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ClientDisconnected()


class EventStream(StreamingResponse):
    """Server-sent events of one request's run. However the response ends (the client gone included:
    Starlette then cancels the stream), what the run still decodes is stopped."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], run: RequestRun):
        super().__init__(events, headers={"Cache-Control": "no-cache"})
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(results: list[JobResult]) -> dict:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _extension(results: list[JobResult], abstain_below: float | None) -> dict | None:
    """One prompt's answer summary, or ``{"prompts": [...]}`` with one per prompt (None where not multiple-choice)."""
    answers = [result.answer_summary(abstain_below) for result in results]
    if not any(answers):
        return None
    return answers[0] if len(answers) == 1 else {"prompts": answers}


class OpenAIRoutes:
    """Handlers bound to one predictor."""

    def __init__(self, predictor: MedssrPredictor):
        self.predictor = predictor

    async def _read(self, request: Request) -> dict:
        if not self.predictor.ready:
            raise RequestError(503, f"model '{self.predictor.name}' is not ready", code="model_not_ready")
        body = parse_json_body(await request.body())  # BodyLimitMiddleware has bounded its size
        require_model(body, self.predictor.name)
        return body

    async def chat_completions(self, request: Request):
        return await self._answer(request, "messages")

    async def completions(self, request: Request):
        return await self._answer(request, "prompt")

    async def _answer(self, request: Request, param: str):
        chat = param == "messages"
        try:
            body = await self._read(request)
            stream, include_usage = parse_stream(body)
            jobs = [chat_job(body)] if chat else completion_jobs(body)
            settings = parse_settings(body, self.predictor.config, chat=chat)
            if stream:
                run = await self.predictor.submit(jobs, settings, param=param)
                return EventStream(self._events(run, chat, include_usage), run)
            results = await unless_disconnected(request, self.predictor.complete(jobs, settings, param=param))
        except ClientDisconnected:
            return JSONResponse(status_code=CLIENT_CLOSED_REQUEST, content={})
        response = self._head(chat)
        n = settings.n
        response["object"] = "chat.completion" if chat else "text_completion"
        response["choices"] = [
            self._choice(chat, prompt * n + index, self._echo(jobs[prompt], settings) + completion.text,
                         completion.finish_reason, whole=True, logprobs=self._logprobs(chat, settings, result, completion))
            for prompt, result in enumerate(results)
            for index, completion in enumerate(result.completions)
        ]
        response["usage"] = _usage(results)
        extension = _extension(results, settings.abstain_below)
        if extension:
            response[EXTENSION] = extension
        return JSONResponse(response)

    def _head(self, chat: bool) -> dict:
        return {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.predictor.name,
        }

    @staticmethod
    def _choice(chat: bool, index: int, text: str, finish: str | None, whole: bool = False, role: bool = False,
                logprobs: dict | None = None) -> dict:
        if not chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        if whole:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    def _echo(self, job: PromptJob, settings: GenerationSettings) -> str:
        """The prompt a completion with ``echo`` starts with: its text, or the text of its token ids."""
        if not settings.echo:
            return ""
        return self.predictor.tokenizer.decode(job.prompt) if job.is_tokens else job.prompt

    def _logprobs(self, chat: bool, settings: GenerationSettings, result: JobResult, completion: Completion) -> dict | None:
        if settings.logprobs is None:
            return None
        scores = ([*result.prompt_logprobs] if settings.echo else []) + completion.logprobs
        ids = (result.prompt_ids if settings.echo else []) + completion.token_ids
        return logprobs_body(self.predictor.tokenizer, chat, ids, scores)

    async def _events(self, run: RequestRun, chat: bool, include_usage: bool) -> AsyncIterator[str]:
        """OpenAI's chunks: (chat) a first one with the role, the text as decoded, one with each choice's
        finish reason; the answer summary in the last; the usage chunk (``choices`` empty) when asked."""
        head, n = self._head(chat), run.settings.n
        usage = {"usage": None} if include_usage else {}

        def chunk(choices: list[dict], **extra) -> str:
            return _event({**head, "choices": choices, **usage, **extra})

        settings, tokenizer = run.settings, self.predictor.tokenizer
        if chat:
            yield chunk([self._choice(chat, index, "", None, role=True) for index in range(n * len(run.jobs))])
        echoed: set[int] = set()
        try:
            async for prompt, choice, delta in run.stream():
                index, text, finish = prompt * n + choice, delta.text, delta.finish_reason
                logprobs = None
                if delta.logprob is not None:
                    logprobs = logprobs_body(tokenizer, chat, [delta.token], [delta.logprob])
                if settings.echo and index not in echoed:  # the prompt first, with its own log-probabilities
                    echoed.add(index)
                    scores = run.prompt_logprobs[prompt] if settings.logprobs is not None else None
                    yield chunk([self._choice(chat, index, self._echo(run.jobs[prompt], settings), None,
                                              logprobs=scores and logprobs_body(tokenizer, chat, run.prompt_ids[prompt], scores))])
                if (text or logprobs) and (chat or finish is None):
                    yield chunk([self._choice(chat, index, text, None, logprobs=logprobs)])
                if finish is not None:
                    extra = {}
                    if run.finished and not include_usage:
                        extension = _extension(run.results(), run.settings.abstain_below)
                        extra = {EXTENSION: extension} if extension else {}
                    last = logprobs if not chat and not text and logprobs else None
                    yield chunk([self._choice(chat, index, "" if chat else text, finish, logprobs=last)], **extra)
        except DecodeFailed as exc:  # the headers are sent: the client learns it in the stream
            yield _event(decode_error(self.predictor.name, exc).openai_body())
            return
        if include_usage:
            results = run.results()
            extension = _extension(results, run.settings.abstain_below)
            yield _event({**head, "choices": [], "usage": _usage(results), **({EXTENSION: extension} if extension else {})})
        yield DONE

    def _model(self) -> dict:
        return {"id": self.predictor.name, "object": "model", "created": 0, "owned_by": "medssr"}

    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model()]})

    async def model(self, model: str) -> JSONResponse:
        if model != self.predictor.name:
            raise RequestError(404, f"model '{model}' does not exist; this server serves '{self.predictor.name}'",
                               param="model", code="model_not_found")
        return JSONResponse(self._model())


def logprobs_body(tokenizer, chat: bool, ids: list[int], scores: list[TokenLogprob | None]) -> dict:
    """OpenAI's ``logprobs`` of a choice: chat's ``{"content": [...]}`` or completions' parallel lists
    (a prompt's first token has no log-probability: None), the sampled token among the alternatives."""
    text = lambda token: tokenizer.decode([token])  # noqa: E731
    if chat:
        def entry(token: int, logprob: float) -> dict:
            return {"token": text(token), "logprob": logprob, "bytes": list(text(token).encode("utf-8", "replace"))}

        return {"content": [{**entry(s.token, s.logprob), "top_logprobs": [entry(t, v) for t, v in s.top]}
                            for s in scores]}
    tokens = [text(token) for token in ids]
    offsets = [sum(map(len, tokens[:i])) for i in range(len(tokens))]
    return {
        "tokens": tokens,
        "token_logprobs": [s.logprob if s else None for s in scores],
        "top_logprobs": [{text(s.token): s.logprob, **{text(t): v for t, v in s.top}} if s else None for s in scores],
        "text_offset": offsets,
    }


def register_openai_routes(app: FastAPI, predictor: MedssrPredictor) -> None:
    routes = OpenAIRoutes(predictor)
    router = APIRouter(prefix=OPENAI_PREFIX, tags=["OpenAI"])
    router.add_api_route("/chat/completions", routes.chat_completions, methods=["POST"], response_model=None)
    router.add_api_route("/completions", routes.completions, methods=["POST"], response_model=None)
    router.add_api_route("/models", routes.models, methods=["GET"], response_model=None)
    router.add_api_route("/models/{model:path}", routes.model, methods=["GET"], response_model=None)
    app.include_router(router)
