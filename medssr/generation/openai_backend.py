"""Generation through any OpenAI-compatible HTTP endpoint (vLLM, KServe's OpenAI routes, hosted APIs).

One request per prompt asks for all ``n`` samples (``"n": n``); chat prompts go to
``/chat/completions``, plain text to ``/completions``, through the ``openai`` client. Requests run in a
bounded thread pool. The client's own retry policy is the one retry layer: ``GeneratorConfig.max_retries``
retries of a connect error, a timeout, 408/409/429 or 5xx, with its exponential backoff or the server's
``Retry-After``; any other 4xx is the caller's mistake and fails at once. Before the first request the
endpoint is checked with a short timeout (``GET /models``; any HTTP answer means it is there), so a stopped or
silent server is reported within a minute as :class:`~medssr.dependencies.DependencyUnavailable` naming it,
while a completion may take up to ``timeout_s``. ``top_k`` is sent only when it is not 0 (it is a vLLM
extension that strict OpenAI servers may refuse).

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from medssr.dependencies import reported_unreachable
from medssr.generation.base import GeneratorConfig, Prompt, SamplingParams

LETTER_BIAS = 100
ENDPOINT = "OpenAI-compatible endpoint"


class GenerationRequestError(RuntimeError):
    """A request the endpoint refused (4xx), answered wrongly, or kept failing with a status after every retry."""

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
        import httpx2
        import openai

        if not config.base_url:
            raise ValueError("base_url: the openai backend needs the endpoint's base URL (e.g. http://host/v1)")
        if not config.model:
            raise ValueError("model: the openai backend needs the served model name")
        if config.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if config.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        api_key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        # Without a key no Authorization header is sent (a local vLLM or KServe endpoint needs none).
        self._headers = {} if api_key else {"Authorization": openai.Omit()}
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "no-key",
            max_retries=config.max_retries,
            timeout=httpx2.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            http_client=openai.DefaultHttpxClient(limits=httpx2.Limits(max_connections=config.concurrency)),
        )
        self._openai = openai
        self._checked = False
        self._tokenizer = None
        self._tokenizer_lock = threading.Lock()

    @property
    def wait_settings(self) -> str:
        c = self.config
        return (f"GeneratorConfig max_retries={c.max_retries}, connect_timeout_s={c.connect_timeout_s:g}, "
                f"health_timeout_s={c.health_timeout_s:g}, timeout_s={c.timeout_s:g}")

    def close(self) -> None:
        self._client.close()

    def _reachable(self):
        """Calls in this block that find no endpoint answering, after the client's retries, raise DependencyUnavailable."""
        return reported_unreachable(ENDPOINT, self.base_url, self.wait_settings, self._is_unreachable)

    def _is_unreachable(self, exc: BaseException) -> bool:
        return isinstance(exc, self._openai.APIConnectionError)  # APITimeoutError included

    def check_endpoint(self) -> None:
        """GET /models with ``health_timeout_s``: any HTTP answer (even 404 or 401) means the server is there."""
        with self._reachable():
            try:
                self._client.with_options(timeout=self.config.health_timeout_s).models.list(extra_headers=self._headers)
            except self._openai.APIStatusError:
                pass
        self._checked = True

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

    def _create(self, route, **request):
        """One completion request (the client retries it); a refusal or a status left after every retry is
        GenerationRequestError, no answer at all is DependencyUnavailable."""
        with self._reachable():
            try:
                return route.create(**request, extra_headers=self._headers)
            except self._openai.APIStatusError as exc:
                retried = f" after {self.config.max_retries + 1} attempts" if exc.status_code in (408, 409, 429) or exc.status_code >= 500 else ""
                raise GenerationRequestError(
                    f"{self.base_url} refused the request{retried}: HTTP {exc.status_code}: {str(exc.body or exc.message)[:500]}",
                    status=exc.status_code,
                ) from exc

    def _complete(self, prompt: Prompt, n: int, sampling: SamplingParams, letter_bias: dict[str, int]) -> list[str]:
        request: dict = {
            "model": self.config.model,
            "n": n,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": 1 if sampling.allowed_letters else sampling.max_tokens,
        }
        if sampling.top_k:
            request["extra_body"] = {"top_k": sampling.top_k}
        if sampling.seed is not None:
            request["seed"] = sampling.seed
        if letter_bias:
            request["logit_bias"] = letter_bias
        if isinstance(prompt, str):
            reply = self._create(self._client.completions, prompt=prompt, **request)
            texts = [choice.text or "" for choice in sorted(reply.choices, key=lambda c: c.index or 0)]
        else:
            reply = self._create(self._client.chat.completions, messages=list(prompt), **request)
            texts = [(choice.message.content if choice.message else "") or ""
                     for choice in sorted(reply.choices, key=lambda c: c.index or 0)]
        if len(texts) != n:
            raise GenerationRequestError(f"{self.base_url} returned {len(texts)} choices, asked for {n}")
        if sampling.allowed_letters:
            texts = [validate_letter(text, sampling.allowed_letters) for text in texts]
        return texts

    def generate(self, prompts: Sequence[Prompt], n: int = 1, sampling: SamplingParams = SamplingParams()) -> list[list[str]]:
        from tqdm.auto import tqdm

        if n < 1:
            raise ValueError("n must be >= 1")
        if not self._checked:
            self.check_endpoint()
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
