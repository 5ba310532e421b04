"""Generation through any OpenAI-compatible HTTP endpoint (vLLM, KServe's OpenAI routes, hosted APIs).

One request per prompt asks for all ``n`` samples (``"n": n``); chat prompts go to
``/chat/completions``, plain text to ``/completions``. Requests run in a bounded thread pool. Connect
errors, timeouts, 429 and 5xx are retried with exponential backoff; any other 4xx is the caller's
mistake and fails at once. ``top_k`` is sent only when it is not 0 (it is a vLLM extension that
strict OpenAI servers may refuse).

Constrained letters (``allowed_letters``): the request asks for one token, and when ``config.tokenizer``
names the served model's tokenizer, a ``logit_bias`` of +100 on the letters' tokens makes the server
pick one of them. The server's reply is always validated, because not every server honours
``logit_bias``: a reply that is an allowed letter is kept; one that starts with an allowed letter
standing alone ("B.", "(B", "B)") becomes that letter; anything else ("Based", "X", "") becomes "".
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from medssr.generation.base import GeneratorConfig, Prompt, SamplingParams

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
LETTER_BIAS = 100


class GenerationRequestError(RuntimeError):
    """A request the endpoint refused (4xx) or kept failing after every retry."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def validate_letter(reply: str, allowed: Sequence[str]) -> str:
    """The allowed letter a constrained reply stands for, or "" when it stands for none."""
    text = reply.strip()
    if text in allowed:
        return text
    match = re.match(r"^[(\[*]*([A-Z])(?![A-Za-z0-9])", text)
    return match.group(1) if match and match.group(1) in allowed else ""


class OpenAIGenerator:
    """The ``openai`` backend of :class:`medssr.generation.base.Generator`."""

    def __init__(self, config: GeneratorConfig):
        import httpx

        if not config.base_url:
            raise ValueError("base_url: the openai backend needs the endpoint's base URL (e.g. http://host/v1)")
        if not config.model:
            raise ValueError("model: the openai backend needs the served model name")
        if config.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(max_connections=config.concurrency),
        )
        self._httpx = httpx
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def _letter_bias(self, letters: Sequence[str]) -> dict[str, int]:
        if not self.config.tokenizer:
            return {}
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                from medssr.models import resolve_model

                self._tokenizer = AutoTokenizer.from_pretrained(
                    resolve_model(self.config.tokenizer), trust_remote_code=self.config.trust_remote_code
                )
        from medssr.generation.transformers_backend import letter_token_ids

        return {str(token_id): LETTER_BIAS for token_id in letter_token_ids(self._tokenizer, letters)}

    def _post(self, route: str, body: dict) -> dict:
        """POST with retries on transient failures; returns the parsed JSON reply."""
        url = f"{self.base_url}/{route}"
        attempts = 1 + max(0, self.config.max_retries)
        problem = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._client.post(url, json=body)
            except (self._httpx.TransportError,) as exc:  # connect errors, timeouts, dropped connections
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUSES:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                continue
            if response.status_code >= 400:
                raise GenerationRequestError(
                    f"{url} refused the request: HTTP {response.status_code}: {response.text[:500]}",
                    status=response.status_code,
                )
            return response.json()
        raise GenerationRequestError(f"{url} failed after {attempts} attempts; last error: {problem}")

    def _complete(self, prompt: Prompt, n: int, sampling: SamplingParams, letter_bias: dict[str, int]) -> list[str]:
        body: dict = {
            "model": self.config.model,
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": 1 if sampling.allowed_letters else sampling.max_tokens,
        }
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if letter_bias:
            body["logit_bias"] = letter_bias
        if isinstance(prompt, str):
            reply = self._post("completions", {**body, "prompt": prompt})
            choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
            texts = [choice.get("text") or "" for choice in choices]
        else:
            reply = self._post("chat/completions", {**body, "messages": list(prompt)})
            choices = sorted(reply["choices"], key=lambda c: c.get("index", 0))
            texts = [(choice.get("message") or {}).get("content") or "" for choice in choices]
        if len(texts) != n:
            raise GenerationRequestError(f"{self.base_url} returned {len(texts)} choices, asked for {n}")
        if sampling.allowed_letters:
            texts = [validate_letter(text, sampling.allowed_letters) for text in texts]
        return texts

    def generate(self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams = SamplingParams()) -> list[list[str]]:
        from tqdm.auto import tqdm

        if n < 1:
            raise ValueError("n must be >= 1")
        letter_bias = self._letter_bias(sampling.allowed_letters) if sampling.allowed_letters else {}
        results: list[list[str]] = [[] for _ in prompts]
        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            futures = {pool.submit(self._complete, prompt, n, sampling, letter_bias): i for i, prompt in enumerate(prompts)}
            progress = tqdm(total=len(futures), desc="generate", unit="prompt", disable=not self.config.progress)
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update()
            except BaseException:
                for pending in futures:
                    pending.cancel()
                raise
            finally:
                progress.close()
        return results
