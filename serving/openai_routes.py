"""OpenAI-compatible routes on the KServe model server's app, for CPU serving without vLLM.

KServe serves ``/openai/v1/...`` only through its vLLM-backed layer; these routes give the same paths
with the transformers backend. Responses follow OpenAI's schema (the official client parses them);
a multiple-choice question adds one extension field, ``medssr``: ``{"answer", "letters", "answers",
"agreement"}``. Errors use OpenAI's ``{"error": {"message", "type", "param", "code"}}`` shape.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from medssr.serving.predictor import JobResult, MedssrPredictor
from medssr.serving.protocol import (
    RequestError,
    chat_job,
    completion_jobs,
    parse_json_body,
    parse_settings,
    require_model,
)

OPENAI_PREFIX = "/openai/v1"
# Not sent to anyone (the client is gone); recorded in the request metrics, as nginx does.
CLIENT_CLOSED_REQUEST = 499
DISCONNECT_POLL_S = 0.1  # how soon a gone client's queued prompts are dropped; one cheap receive check


class ClientDisconnected(Exception):
    """The client closed the connection while its request waited: its queued prompts were dropped."""


async def unless_disconnected(request: Request, work):
    """Await ``work``, but cancel it when the client goes away, so abandoned prompts never reach the model."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            raise ClientDisconnected()


def error_response(error: RequestError) -> JSONResponse:
    headers = {"Retry-After": "1"} if error.status in (429, 503) else None
    return JSONResponse(status_code=error.status, content=error.openai_body(), headers=headers)


def _usage(results: list[JobResult]) -> dict:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


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

    async def chat_completions(self, request: Request) -> JSONResponse:
        try:
            body = await self._read(request)
            job = chat_job(body)
            settings = parse_settings(body, self.predictor.config)
            [result] = await unless_disconnected(request, self.predictor.complete([job], settings, param="messages"))
        except RequestError as error:
            return error_response(error)
        except ClientDisconnected:
            return JSONResponse(status_code=CLIENT_CLOSED_REQUEST, content={})
        response = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.predictor.name,
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": completion.text},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
                for index, completion in enumerate(result.completions)
            ],
            "usage": _usage([result]),
        }
        summary = result.answer_summary()
        if summary:
            response["medssr"] = summary
        return JSONResponse(response)

    async def completions(self, request: Request) -> JSONResponse:
        try:
            body = await self._read(request)
            jobs = completion_jobs(body)
            settings = parse_settings(body, self.predictor.config)
            results = await unless_disconnected(request, self.predictor.complete(jobs, settings, param="prompt"))
        except RequestError as error:
            return error_response(error)
        except ClientDisconnected:
            return JSONResponse(status_code=CLIENT_CLOSED_REQUEST, content={})
        choices, answers = [], []
        for result in results:
            for completion in result.completions:
                choices.append(
                    {"index": len(choices), "text": completion.text, "logprobs": None,
                     "finish_reason": completion.finish_reason}
                )
            answers.append(result.answer_summary())
        response = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.predictor.name,
            "choices": choices,
            "usage": _usage(results),
        }
        if any(answers):
            # One entry per prompt (None for a prompt that is not multiple-choice).
            response["medssr"] = answers[0] if len(answers) == 1 else {"prompts": answers}
        return JSONResponse(response)

    async def models(self) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": self.predictor.name, "object": "model", "created": 0, "owned_by": "medssr"}],
            }
        )


def register_openai_routes(app: FastAPI, predictor: MedssrPredictor) -> None:
    routes = OpenAIRoutes(predictor)
    router = APIRouter(prefix=OPENAI_PREFIX, tags=["OpenAI"])
    router.add_api_route("/chat/completions", routes.chat_completions, methods=["POST"], response_model=None)
    router.add_api_route("/completions", routes.completions, methods=["POST"], response_model=None)
    router.add_api_route("/models", routes.models, methods=["GET"], response_model=None)
    app.include_router(router)
