"""The OpenAI side of the predictor: KServe's ``/openai/v1`` routes call it with vLLM's parsed requests, and it
answers with vLLM's response types.

What the framework lacks is here: a multiple-choice question's reply adds one extension field,
``medssr`` (see :meth:`medssr.serving.predictor.JobResult.answer_summary`), in the last chunk when
streamed; log-probabilities come from the engine's :class:`~medssr.generation.step_decoder.TokenLogprob` s;
``GET /openai/v1/models/{id}`` answers the model (KServe's route of that path is a health check that
answers ``null``, which ``client.models.retrieve`` cannot read). A streamed run is stopped however its
response ends, the client going away included (Starlette then cancels the stream).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse
from kserve.protocol.rest.openai import types

from medssr.generation.step_decoder import TokenLogprob
from medssr.serving.engine import DecodeFailed
from medssr.serving.protocol import EXTENSION, RequestError, chat_job, completion_jobs, settings_from_request
from medssr.serving.run import JobResult, RequestRun, decode_error

DONE = "data: [DONE]\n\n"


async def answer(predictor, request, chat: bool):
    """A completion (``JSONResponse``) or its server-sent events (an async iterator of ``data:`` lines), for the
    :class:`~medssr.serving.predictor.MedssrPredictor` ``predictor``."""
    settings = settings_from_request(request, predictor.config)
    jobs = [chat_job(request.messages)] if chat else completion_jobs(request.prompt)
    param = "messages" if chat else "prompt"
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    if request.stream:
        return events(predictor, await predictor.submit(jobs, settings, param), chat, include_usage)
    reply = Reply(predictor, chat, await predictor.complete(jobs, settings, param), jobs, settings)
    return JSONResponse(reply.whole().model_dump(mode="json"))


class Reply:
    """The response objects of one request's results (``results``: one per prompt, in order)."""

    def __init__(self, predictor, chat: bool, results: list[JobResult], jobs, settings):
        self.predictor, self.chat, self.results, self.jobs, self.settings = predictor, chat, results, jobs, settings
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def head(self) -> dict:
        return {"id": self.id, "created": self.created, "model": self.predictor.name}

    def usage(self) -> types.UsageInfo:
        prompt = sum(r.prompt_tokens for r in self.results)
        completion = sum(r.completion_tokens for r in self.results)
        return types.UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def extension(self) -> dict:
        """``{"medssr": ...}``: one prompt's answer summary, or ``{"prompts": [...]}`` (None where not
        multiple-choice); empty when no prompt is multiple-choice."""
        answers = [result.answer_summary(self.settings.abstain_below) for result in self.results]
        if not any(answers):
            return {}
        return {EXTENSION: answers[0] if len(answers) == 1 else {"prompts": answers}}

    def echo(self, prompt: int) -> str:
        """The prompt a completion with ``echo`` starts with: its text, or the text of its token ids."""
        job = self.jobs[prompt]
        if not self.settings.echo:
            return ""
        return self.predictor.tokenizer.decode(job.prompt) if job.is_tokens else job.prompt

    def whole(self):
        n, choices = self.settings.n, []
        for prompt, result in enumerate(self.results):
            for index, completion in enumerate(result.completions):
                text, ids, scores = completion.text, completion.token_ids, completion.logprobs or []
                if self.settings.echo_only:
                    text, ids, scores = "", [], []
                if self.settings.echo:
                    text, ids, scores = self.echo(prompt) + text, result.prompt_ids + ids, [*result.prompt_logprobs] + scores
                logprobs = self.logprobs(ids, scores) if self.settings.job.logprobs is not None else None
                if self.chat:
                    choices.append(types.ChatCompletionChoice(
                        index=prompt * n + index, message=types.ChatMessage(role="assistant", content=text),
                        logprobs=logprobs, finish_reason=completion.finish_reason))
                else:
                    choices.append(types.CompletionChoice(index=prompt * n + index, text=text, logprobs=logprobs,
                                                          finish_reason=completion.finish_reason))
        kind = types.ChatCompletion if self.chat else types.Completion
        return kind(**self.head(), choices=choices, usage=self.usage(), **self.extension())

    def logprobs(self, ids: list[int], scores: list[TokenLogprob | None]):
        """OpenAI's ``logprobs`` of a choice: chat's ``content`` list or completions' parallel lists (a prompt's
        first token has no log-probability: None), the sampled token among the alternatives."""
        text = lambda token: self.predictor.tokenizer.decode([token], skip_special_tokens=True)  # noqa: E731  (the end token: "")
        if self.chat:
            def entry(token: int, logprob: float) -> dict:
                return {"token": text(token), "logprob": logprob, "bytes": list(text(token).encode("utf-8", "replace"))}

            return types.ChatCompletionLogProbs(content=[
                types.ChatCompletionLogProbsContent(**entry(s.token, s.logprob),
                                                    top_logprobs=[types.ChatCompletionLogProb(**entry(t, v)) for t, v in s.top])
                for s in scores])
        tokens = [text(token) for token in ids]
        return types.CompletionLogProbs(
            tokens=tokens, text_offset=[sum(map(len, tokens[:i])) for i in range(len(tokens))],
            token_logprobs=[s.logprob if s else None for s in scores],
            top_logprobs=[{text(s.token): s.logprob, **{text(t): v for t, v in s.top}} if s else None for s in scores],
        )

    def chunk(self, prompt: int, choice: int, text: str, finish: str | None, ids=(), scores=(), role: bool = False,
              **extra) -> str:
        index = prompt * self.settings.n + choice
        logprobs = self.logprobs(list(ids), list(scores)) if scores else None
        if self.chat:
            delta = types.ChoiceDelta(role="assistant", content=text) if role else types.ChoiceDelta(content=text or None)
            choices = [types.ChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)]
            body = types.ChatCompletionChunk(**self.head(), choices=choices, **extra)
        else:
            choices = [types.CompletionChunkChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish)]
            body = types.CompletionChunk(**self.head(), choices=choices, **extra)
        return f"data: {body.model_dump_json()}\n\n"


async def events(predictor, run: RequestRun, chat: bool, include_usage: bool) -> AsyncIterator[str]:
    """OpenAI's chunks: (chat) a first one with the role, the text as decoded (with each token's
    log-probabilities when asked), one with each choice's finish reason; the answer summary in the last; the
    usage chunk (``choices`` empty) when asked."""
    reply = Reply(predictor, chat, [], run.jobs, run.settings)
    settings, n = run.settings, run.settings.n
    try:
        if chat:
            for prompt in range(len(run.jobs)):
                for choice in range(n):
                    yield reply.chunk(prompt, choice, "", None, role=True)
        started: set[tuple[int, int]] = set()
        async for prompt, choice, delta in run.stream():
            if settings.echo and (prompt, choice) not in started:  # the prompt first, with its own log-probabilities
                scores = run.prompt_logprobs[prompt] if settings.job.logprobs is not None else ()
                yield reply.chunk(prompt, choice, reply.echo(prompt), None, run.prompt_ids[prompt], scores or ())
            started.add((prompt, choice))
            scored = delta.logprob is not None and not settings.echo_only
            text = "" if settings.echo_only else delta.text
            if delta.finish_reason is None:
                if text or scored:
                    yield reply.chunk(prompt, choice, text, None, [delta.token] if scored else (), [delta.logprob] if scored else ())
                continue
            reply.results = run.results() if run.finished else []
            extra = reply.extension() if run.finished and not include_usage else {}
            if chat and (text or scored):
                yield reply.chunk(prompt, choice, text, None, [delta.token] if scored else (), [delta.logprob] if scored else ())
                text, scored = "", False
            yield reply.chunk(prompt, choice, text, delta.finish_reason, [delta.token] if scored else (),
                              [delta.logprob] if scored else (), **extra)
        if include_usage:
            reply.results = run.results()
            kind = types.ChatCompletionChunk if chat else types.CompletionChunk
            body = kind(**reply.head(), choices=[], usage=reply.usage(), **reply.extension())
            yield f"data: {body.model_dump_json()}\n\n"
    except DecodeFailed as exc:  # the headers are sent: the client learns it in the stream
        yield f"data: {json.dumps(decode_error(predictor.name, exc).openai_body())}\n\n"
        return
    finally:
        run.close()
    yield DONE


def register_model_route(app: FastAPI, predictor, prefix: str) -> None:
    """``GET {prefix}/v1/models/{model}``: the model, as OpenAI's ``models.retrieve`` reads it (before KServe's own
    route of that path, which it shadows)."""

    async def model(model: str) -> JSONResponse:
        if model != predictor.name:
            raise RequestError(404, f"model '{model}' does not exist; this server serves '{predictor.name}'",
                               param="model", code="model_not_found")
        return JSONResponse(types.Model(id=predictor.name, owned_by="medssr").model_dump(mode="json"))

    router = APIRouter(prefix=prefix, tags=["OpenAI"])
    router.add_api_route("/v1/models/{model:path}", model, methods=["GET"], response_model=None)
    app.include_router(router)
