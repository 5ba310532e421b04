"""Ask a served model a question over the OpenAI-compatible API (``medssr ask``).

Works against our predictor (which adds the ``medssr`` answer field) and against any other
OpenAI-compatible endpoint, such as KServe's Hugging Face runtime on a cluster: there the letter is
read from the reply locally, with the same :mod:`medssr.answers` rules.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from medssr.answers import extract_answer
from medssr.data import LETTERS, MCQItem, options_in_text
from medssr.prompts import build_messages


@dataclass
class AskConfig:
    url: str = field(metadata={"help": "Server URL, e.g. http://127.0.0.1:8080 (the /openai/v1 suffix is optional)."})
    question: str = field(metadata={"help": "The question; 'A. ...' lines at its end are its options."})
    options: list[str] = field(default_factory=list, metadata={"help": "Option texts, lettered A, B, ... in order."})
    model: str = field(default="", metadata={"help": "Served model name; empty asks the server for its first model."})
    max_tokens: int = field(default=512, metadata={"help": "Longest reply, in tokens."})
    temperature: float = field(default=0.0, metadata={"help": "0 answers deterministically."})
    timeout_s: float = field(default=300.0, metadata={"help": "Request timeout."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Env var holding the API key, if any."})


@dataclass
class AskResult:
    text: str
    answer: str | None
    letters: str
    options: dict[str, str]
    model: str


def openai_base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/openai/v1") else f"{url}/openai/v1"


def build_question_messages(question: str, options: list[str]) -> tuple[list[dict[str, str]], dict[str, str]]:
    """The chat input for a question: the evaluation prompt when it is multiple-choice, else the text."""
    if options:
        if len(options) > len(LETTERS):
            raise ValueError(f"options: at most {len(LETTERS)} options, got {len(options)}")
        item = MCQItem(id="ask", stem=question, options=dict(zip(LETTERS, options)))
    elif options_in_text(question):
        from medssr.data import parse_question_text

        stem, parsed = parse_question_text(question)
        item = MCQItem(id="ask", stem=stem, options=parsed)
    else:
        return [{"role": "user", "content": question}], {}
    return build_messages(item), dict(item.options)


def run_ask(config: AskConfig) -> AskResult:
    import openai

    messages, options = build_question_messages(config.question, config.options)
    client = openai.OpenAI(
        base_url=openai_base_url(config.url),
        api_key=os.environ.get(config.api_key_env) or "not-needed",
        timeout=config.timeout_s,
        max_retries=2,
    )
    try:
        model = config.model or client.models.list().data[0].id
        response = client.chat.completions.create(
            model=model, messages=messages, max_tokens=config.max_tokens, temperature=config.temperature
        )
    except openai.APIStatusError as exc:
        raise ValueError(f"{config.url} answered {exc.status_code}: {_error_message(exc)}") from None
    except openai.APIConnectionError as exc:
        raise ConnectionError(f"cannot reach {config.url}: {exc}") from None
    text = response.choices[0].message.content or ""
    extension = (response.model_extra or {}).get("medssr") or {}
    letters = "".join(options)
    if "answer" in extension:
        answer = extension["answer"]
    else:
        answer = extract_answer(text, letters, mode="lenient", options=options) if options else None
    return AskResult(text=text, answer=answer, letters=letters, options=options, model=model)


def _error_message(exc) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    return (error.get("message") if isinstance(error, dict) else str(error)) or str(exc)
