"""The KServe predictor: a Hugging Face causal LM behind KServe's v1, v2 and OpenAI routes, on one of two engines.

It is a ``kserve.Model`` (v1 ``predict``, v2 ``infer``, their metadata) and an ``OpenAIGenerativeModel``
(KServe mounts its own ``/openai/v1`` routes, with vLLM's request and response types, for it; see
:mod:`medssr.serving.openai_api`). Every route ends in one ``submit()`` coroutine: it checks the prompts
against the token limits (tokenizing off the event loop) and queues them on the engine
(:mod:`medssr.serving.engine`: medssr's step decoder, or vLLM's AsyncLLM), whose
:class:`~medssr.serving.run.RequestRun` yields the text as it is decoded and, at the end, the results and
the vote.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

from medssr.serving.kserve_import import import_kserve

import_kserve()  # before the first `from kserve import ...`

from kserve import Model  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.protocol.rest.openai import OpenAIGenerativeModel  # noqa: E402

from medssr.generation.base import Prompt  # noqa: E402
from medssr.generation.step_decoder import StepDecoder  # noqa: E402
from medssr.serving import openai_api  # noqa: E402
from medssr.serving.config import ServeConfig  # noqa: E402
from medssr.serving.engine import DecodeFailed, DecoderStopped, Engine, QueueFull  # noqa: E402
from medssr.serving.metrics import PROMPT_TOKENS, REJECTED  # noqa: E402
from medssr.serving.protocol import (  # noqa: E402
    GenerationSettings,
    PromptJob,
    RequestError,
    completion_jobs,
    instance_job,
    parameters_request,
    permuted_jobs,
    require_unicode_text,
    settings_from_request,
)
from medssr.serving.run import JobResult, RequestRun, decode_error  # noqa: E402
from medssr.serving.scheduler import DecodeScheduler  # noqa: E402

V2_TEXT_INPUTS = ("text_input", "prompt", "input")


class MedssrPredictor(Model, OpenAIGenerativeModel):
    """A ``kserve.Model`` and KServe OpenAI model serving one causal LM folder; ``ready`` once loaded."""

    def __init__(self, config: ServeConfig):
        super().__init__(config.name)
        self._loaded = False  # (OpenAIModel's constructor calls itself ready)
        self.config = config
        self.tokenizer = None
        self.scheduler: Engine | None = None
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
        if self.config.engine == "vllm":
            from medssr.serving.vllm_engine import VLLMEngine

            self.scheduler = VLLMEngine(self.config, path)
            self.context_window = min(self.context_window or self.config.max_model_len, self.config.max_model_len)
        else:
            generator = build_generator(GeneratorConfig(
                backend="transformers", model=path, batch_size=self.config.max_rows, device=self.config.device,
                dtype=self.config.dtype, trust_remote_code=trust, progress=False))
            self.scheduler = DecodeScheduler(
                StepDecoder(generator, self.config.max_rows), self.config.max_batch_size, self.config.max_queue,
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
        if window and tokens + settings.job.sampling.max_tokens > window:
            REJECTED.labels(reason="prompt_too_long").inc()
            raise RequestError(
                400,
                f"the prompt ({tokens} tokens) plus max_tokens ({settings.job.sampling.max_tokens}) exceeds the "
                f"model's context window of {window} tokens",
                param=param,
                code="context_length_exceeded",
            )

    async def submit(self, jobs: list[PromptJob], settings: GenerationSettings, param: str = "prompt") -> RequestRun:
        """Queue every job of one request for the running batch (under ``permute_options``, each choice's own
        prompt); RequestError on any client error (429 when the queue is full)."""
        require_unicode_text(jobs, param)
        jobs = permuted_jobs(jobs, settings, param)
        prompts = [(job, choice, prompt) for job in jobs for choice, prompt in enumerate(job.engine_prompts())]
        if len(prompts) > self.config.max_queue:
            raise RequestError(400, f"{len(prompts)} prompts in one request; this server takes at most "
                                    f"{self.config.max_queue}", param=param, code="limit_exceeded")
        self._check_token_ids(list(settings.job.logit_bias), "logit_bias")
        # A prompt near the body limit takes a while to tokenize: never on the event loop, which must keep
        # answering health probes and other requests meanwhile.
        encoded = await asyncio.to_thread(lambda: [self.encode_prompt(prompt) for _, _, prompt in prompts])
        for (job, _, _), ids in zip(prompts, encoded):
            if job.is_tokens:
                self._check_token_ids(ids, param)
            self._check_length(len(ids), settings, param)
        decode_jobs = [replace(settings.sample_job(choice, job.orders), key=self.scheduler.new_key(), prompt_ids=ids)
                       for (job, choice, _), ids in zip(prompts, encoded)]
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

    async def create_completion(self, request, raw_request=None, context=None):
        return await openai_api.answer(self, request, chat=False)

    async def create_chat_completion(self, request, raw_request=None, context=None):
        return await openai_api.answer(self, request, chat=True)

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
        settings = settings_from_request(parameters_request(parameters), self.config)
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
        prompts = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in text_input.data or []]
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise RequestError(400, f"input '{text_input.name}' must hold non-empty strings", param=text_input.name,
                               code="invalid_value")
        parameters = dict(request.parameters or {})
        if "n" in parameters:
            raise RequestError(400, "'n' is not supported on the v2 protocol; use /openai/v1/completions",
                               param="n", code="unsupported")
        settings = settings_from_request(parameters_request(parameters), self.config)
        results = await self.complete(completion_jobs(prompts), settings, param=text_input.name)
        count = len(results)
        outputs = [
            InferOutput("text_output", [count], "BYTES", [r.completions[0].text for r in results]),
            InferOutput("answer", [count], "BYTES", [(r.answer_summary() or {}).get("answer") or "" for r in results]),
            InferOutput("completion_tokens", [count], "INT64", [r.completion_tokens for r in results]),
        ]
        return InferResponse(response_id=request.id or uuid.uuid4().hex, model_name=self.name, infer_outputs=outputs)

