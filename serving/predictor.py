"""The KServe predictor: a Hugging Face causal LM behind the v1 and v2 protocols, with dynamic batching.

One ``complete()`` coroutine serves every route (v1, v2 and the OpenAI-compatible ones): it checks
the prompt against the token limits, queues it on the batcher, cuts completions at stop sequences,
and for a multiple-choice question reads the chosen letter with :mod:`medssr.answers`.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medssr.serving.kserve_import import import_kserve

import_kserve()  # before the first `from kserve import ...`

from kserve import Model  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

from medssr.answers import extract_answer, majority_vote  # noqa: E402
from medssr.generation.base import Prompt, SamplingParams  # noqa: E402
from medssr.serving.batcher import DynamicBatcher, QueueFull  # noqa: E402
from medssr.serving.config import ServeConfig  # noqa: E402
from medssr.serving.metrics import GENERATED_TOKENS, PROMPT_TOKENS, REJECTED  # noqa: E402
from medssr.serving.protocol import (  # noqa: E402
    GenerationSettings,
    PromptJob,
    RequestError,
    completion_jobs,
    instance_job,
    parse_settings,
    require_unicode_text,
)

V2_TEXT_INPUTS = ("text_input", "prompt", "input")
# "NAME@ALIAS" on the command line is shorthand for the MLflow registry reference models:/NAME@ALIAS.
REGISTRY_SHORTHAND = re.compile(r"^[\w.\-]+@[\w\-]+$")


def resolve_model_source(ref: str) -> str:
    """A model reference as a local folder or hub id: registry references go through MLflow first."""
    from medssr.models import resolve_model

    if REGISTRY_SHORTHAND.match(ref) and not Path(ref).exists():
        ref = f"models:/{ref}"
    if ref.startswith("models:/"):
        from medssr.tracking import resolve_model_reference

        ref = resolve_model_reference(ref)
    return resolve_model(ref)


@dataclass
class Completion:
    text: str
    tokens: int
    finish_reason: str
    answer: str | None = None


@dataclass
class JobResult:
    """The completions of one prompt, its token count, and the question's letters when multiple-choice."""

    completions: list[Completion]
    prompt_tokens: int
    options: dict[str, str] = field(default_factory=dict)

    @property
    def letters(self) -> str:
        return "".join(self.options)

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.completions)

    def answer_summary(self) -> dict[str, Any] | None:
        """``{"answer", "letters", "answers", "agreement"}`` for a multiple-choice question, else None.

        With ``n`` > 1 the answer is the majority vote over the completions (None on a tie).
        """
        if not self.options:
            return None
        answers = [c.answer for c in self.completions]
        vote = majority_vote(answers)
        return {"answer": vote.label, "letters": self.letters, "answers": answers, "agreement": vote.agreement}


class MedssrPredictor(Model):
    """A ``kserve.Model`` serving one causal LM folder; ``ready`` once the weights are loaded."""

    def __init__(self, config: ServeConfig):
        super().__init__(config.name)
        self.config = config
        self.tokenizer = None
        self.generator = None
        self.batcher: DynamicBatcher | None = None
        self.context_window: int | None = None

    def load(self) -> bool:
        from transformers import AutoConfig, AutoTokenizer

        from medssr.generation import GeneratorConfig, build_generator

        if self.config.torch_threads:
            import torch

            torch.set_num_threads(self.config.torch_threads)
        path = resolve_model_source(self.config.model)
        trust = self.config.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        # A folder without tokenizer files still loads an empty tokenizer; refuse it here, not at every request.
        if not self.tokenizer.encode("The answer is", add_special_tokens=False):
            raise ValueError(f"{path}: the model has no usable tokenizer (it encodes text to no tokens); "
                             "save the tokenizer files beside the weights")
        model_config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
        self.context_window = getattr(model_config, "max_position_embeddings", None)
        self.generator = build_generator(
            GeneratorConfig(
                backend="transformers",
                model=path,
                # A whole dynamic batch (every prompt times n) must be one forward batch.
                batch_size=self.config.max_batch_size * self.config.max_n,
                device=self.config.device,
                dtype=self.config.dtype,
                trust_remote_code=trust,
                progress=False,
            )
        )
        self.batcher = DynamicBatcher(
            self._run_batch, self.config.max_batch_size, self.config.max_wait_ms, self.config.max_queue
        )
        self.ready = True
        return self.ready

    def stop(self):
        if self.batcher is not None:
            self.batcher.close()
        super().stop()

    # ------------------------------------------------------------------------------------ generation

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the model will read, encoded the way the transformers backend encodes them."""
        if isinstance(prompt, str):
            return len(self.tokenizer.encode(prompt, add_special_tokens=True))
        if not self.tokenizer.chat_template:
            raise RequestError(400, f"model '{self.name}' has no chat template; use /openai/v1/completions",
                               param="messages", code="unsupported")
        text = self.tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        return len(self.tokenizer.encode(text, add_special_tokens=False))

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

    def _run_batch(self, prompts: list[Prompt], group: tuple[int, SamplingParams, int]) -> list[list[Completion]]:
        """Runs in the batcher's thread: one generate call for the whole batch."""
        n, sampling, min_tokens = group
        extra = {"min_new_tokens": min_tokens} if min_tokens else {}
        texts = self.generator.generate(prompts, n=n, sampling=sampling, **extra)
        results = []
        for per_prompt in texts:
            completions = []
            for text in per_prompt:
                tokens = min(len(self.tokenizer.encode(text, add_special_tokens=False)), sampling.max_tokens)
                finish = "length" if tokens >= sampling.max_tokens else "stop"
                completions.append(Completion(text=text, tokens=tokens, finish_reason=finish))
            results.append(completions)
        GENERATED_TOKENS.inc(sum(c.tokens for per_prompt in results for c in per_prompt))
        return results

    async def complete(self, jobs: list[PromptJob], settings: GenerationSettings, param: str = "prompt") -> list[JobResult]:
        """Generate for every job (one request), all queued together; RequestError on any client error."""
        if len(jobs) > self.config.max_queue:
            raise RequestError(400, f"{len(jobs)} prompts in one request; this server takes at most "
                                    f"{self.config.max_queue}", param=param, code="limit_exceeded")
        require_unicode_text(jobs, param)
        # A prompt near the body limit takes a while to tokenize: never on the event loop, which must keep
        # answering health probes and other requests meanwhile.
        prompt_tokens = await asyncio.to_thread(lambda: [self.count_prompt_tokens(job.prompt) for job in jobs])
        for tokens in prompt_tokens:
            self._check_length(tokens, settings, param)
        try:
            outputs = await self.batcher.submit([job.prompt for job in jobs], settings.batch_group)
        except QueueFull as exc:
            REJECTED.labels(reason="queue_full").inc()
            raise RequestError(429, f"server is at capacity: {exc}; retry later", code="server_overloaded") from None
        PROMPT_TOKENS.inc(sum(prompt_tokens))
        results = []
        for job, tokens, completions in zip(jobs, prompt_tokens, outputs):
            finished = [self._finish(c, settings.stop, job.options) for c in completions]
            results.append(JobResult(completions=finished, prompt_tokens=tokens, options=job.options))
        return results

    @staticmethod
    def _finish(completion: Completion, stop: tuple[str, ...], options: dict[str, str]) -> Completion:
        text, finish = completion.text, completion.finish_reason
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        answer = extract_answer(text, "".join(options), mode="lenient", options=options) if options else None
        return Completion(text=text, tokens=completion.tokens, finish_reason=finish, answer=answer)

    # -------------------------------------------------------------------------------- KServe protocols

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
        return {"predictions": [self._prediction(result) for result in results]}

    @staticmethod
    def _prediction(result: JobResult) -> dict:
        prediction: dict[str, Any] = {
            "text": result.completions[0].text,
            "finish_reason": result.completions[0].finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
        }
        if len(result.completions) > 1:
            prediction["texts"] = [c.text for c in result.completions]
        summary = result.answer_summary()
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
