"""The model server, tested running: KServe's ModelServer with our predictor in a child process."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from medssr.serving.config import ServeConfig
from medssr.serving.protocol import RequestError, chat_job, settings_from_request
from tests.plugins.kserve_server import ANSWER_TEXT, SERVED_NAME

QUESTION = (
    "A 4-year-old has seizures, ataxia and hypotonia. Which gene is most likely involved?\n"
    "A. SCN1A\nB. MECP2\nC. ATXN1\nD. FMR1"
)


def chat_body(**extra) -> dict:
    return {"model": SERVED_NAME, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, **extra}


def assert_serving(server) -> None:
    assert server.alive(), server.log_tail()
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


# ------------------------------------------------------------------------------------ no server needed


def test_config_rejects_bad_limits():
    with pytest.raises(ValueError, match="model"):
        ServeConfig()
    with pytest.raises(ValueError, match="max_queue"):
        ServeConfig(model="m", max_queue=0)
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServeConfig(model="m", default_max_tokens=4096, max_tokens_limit=2048)


def completion_request(**fields):
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return CompletionRequest(model="m", prompt="x", **fields)


def test_settings_take_server_defaults_and_enforce_limits():
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    config = ServeConfig(model="m", max_n=2, max_tokens_limit=64, default_max_tokens=32)
    settings = settings_from_request(ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}]), config)
    assert (settings.n, settings.job.sampling.max_tokens, settings.job.sampling.temperature, settings.job.sampling.top_k) == (1, 32, 0.6, 20)
    assert settings_from_request(completion_request(min_tokens=16), config).job.min_tokens == 16
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "x"}], max_completion_tokens=8, stop="\n",
                                 logprobs=True, top_logprobs=2)
    assert (settings_from_request(chat, config).job.sampling.max_tokens, settings_from_request(chat, config).job.logprobs) == (8, 2)
    echoed = settings_from_request(completion_request(echo=True, logprobs=1, logit_bias={"7": -3}), config)
    assert (echoed.job.prompt_logprobs, echoed.job.logit_bias) == (1, {7: -3.0})
    for fields, param, code in [({"n": 3}, "n", "limit_exceeded"), ({"max_tokens": 65}, "max_tokens", "limit_exceeded"),
                                ({"top_p": 0}, "top_p", "invalid_value"), ({"min_tokens": 33}, "min_tokens", "invalid_value"),
                                ({"presence_penalty": 2.5}, "presence_penalty", "invalid_value"),
                                ({"logit_bias": {"5": 101}}, "logit_bias", "invalid_value"), ({"min_p": 0.1}, "min_p", "unsupported"),
                                ({"suffix": "y"}, "suffix", "unsupported"), ({"medssr": {"n": 3}}, "n", "limit_exceeded"),
                                ({"medssr": {"votes": 3}}, "medssr.votes", "invalid_value")]:
        with pytest.raises(RequestError) as caught:
            settings_from_request(completion_request(**fields), config)
        assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, code), fields


def test_chat_job_finds_the_options_of_the_last_user_message():
    job = chat_job([{"role": "system", "content": "x"}, {"role": "user", "content": QUESTION}])
    assert "".join(job.options) == "ABCD"
    assert chat_job([{"role": "developer", "content": "x"}, {"role": "user", "content": "What causes ataxia?"}]).options == {}
    with pytest.raises(RequestError, match=r"messages\[0\]\.role"):
        chat_job([{"role": "robot", "content": "x"}])


@pytest.mark.slow  # imports kserve and transformers
def test_serve_refuses_a_missing_model_with_one_line(tmp_path, capsys):
    from medssr.cli import main

    assert main(["serve", "--local", str(tmp_path / "no-such-model"), "--port", "1"]) == 2
    assert "no model folder at" in capsys.readouterr().err


@pytest.mark.slow  # imports kserve and transformers
def test_serve_refuses_a_model_folder_without_a_tokenizer_at_start(tiny_model, tmp_path):
    from medssr.serving.process import ServerProcess, free_port

    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_model / name, folder / name)
    server = ServerProcess(ServeConfig(model=str(folder), port=free_port(), torch_threads=1), tmp_path / "server.log")
    try:
        with pytest.raises(RuntimeError, match="model server exited with 2") as caught:
            server.start(timeout_s=120)  # returns once /v2/health/ready answers 200: it must not
    finally:
        server.stop()
    assert "the model has no usable tokenizer" in str(caught.value) and "Traceback" not in str(caught.value)


@pytest.mark.slow  # loads the model in this process
def test_prompts_are_tokenized_off_the_event_loop(answering_model):
    from medssr.serving.predictor import MedssrPredictor
    from medssr.serving.protocol import PromptJob

    config = ServeConfig(model=str(answering_model), max_prompt_tokens=256, torch_threads=1)
    predictor = MedssrPredictor(config)
    predictor.load()
    settings = settings_from_request(completion_request(), config)
    prompt = "seizures ataxia hypotonia " * 30_000  # just under the 1 MB body limit: long to tokenize

    async def loop_turns_while_tokenizing() -> tuple[int, RequestError]:
        turns = 0

        async def heartbeat():
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        beat = asyncio.ensure_future(heartbeat())
        await asyncio.sleep(0)
        before = turns
        with pytest.raises(RequestError) as caught:
            await predictor.complete([PromptJob(prompt=prompt)], settings)
        beat.cancel()
        return turns - before, caught.value

    try:
        turns, error = asyncio.run(loop_turns_while_tokenizing())
    finally:
        predictor.stop()
    assert error.status == 400 and error.code == "context_length_exceeded"
    assert turns > 0, "the event loop made no turn while the prompt was tokenized"


# ------------------------------------------------------------------------------------ running server


@pytest.mark.slow
def test_openai_client_chat_completion_with_answer_letter(kserve_server):
    import openai

    client = openai.OpenAI(base_url=f"{kserve_server.url}/openai/v1", api_key="not-needed", max_retries=0)
    response = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "system", "content": "Answer with one letter."}, {"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=16,
    )
    assert response.object == "chat.completion" and response.model == SERVED_NAME
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == ANSWER_TEXT
    assert choice.finish_reason == "stop"
    assert response.usage.prompt_tokens > 0 and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    extension = response.model_extra["medssr"]
    assert extension["answer"] == "C" and extension["letters"] == "ABCD" and extension["answers"] == ["C"]

    sampled = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": QUESTION}], n=3, temperature=0.7, seed=1, max_tokens=8
    )
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert len(sampled.model_extra["medssr"]["answers"]) == 3

    plain = client.chat.completions.create(
        model=SERVED_NAME, messages=[{"role": "user", "content": "hello"}], temperature=0, max_tokens=4
    )
    assert "medssr" not in (plain.model_extra or {})  # not a multiple-choice question: no answer field


@pytest.mark.slow
def test_openai_client_completions_and_models(kserve_server):
    import openai

    client = openai.OpenAI(base_url=f"{kserve_server.url}/openai/v1", api_key="not-needed", max_retries=0)
    models = client.models.list()
    assert [m.id for m in models.data] == [SERVED_NAME]
    response = client.completions.create(model=SERVED_NAME, prompt=["The answer is", "A patient"], max_tokens=5, n=2)
    assert response.object == "text_completion"
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason in ("stop", "length") for c in response.choices)
    assert 0 < response.usage.completion_tokens <= 4 * 5
    cut = client.completions.create(model=SERVED_NAME, prompt="The answer is", max_tokens=16, temperature=1.0,
                                    top_p=1.0, seed=3, stop=["e", "a", "o", "i"])
    assert not re.search("[eaoi]", cut.choices[0].text)


@pytest.mark.slow
def test_kserve_v1_and_v2_protocols(kserve_server):
    url = kserve_server.url
    v1 = httpx.post(
        f"{url}/v1/models/{SERVED_NAME}:predict",
        json={
            "instances": [
                {"question": "Which gene is most likely involved?", "options": {"A": "SCN1A", "B": "MECP2", "C": "ATXN1"}},
                {"messages": [{"role": "user", "content": QUESTION}]},
                {"prompt": "The answer is"},
            ],
            "parameters": {"temperature": 0, "max_tokens": 12},
        },
        timeout=60,
    )
    assert v1.status_code == 200, v1.text
    first, second, third = v1.json()["predictions"]
    assert first["text"] == ANSWER_TEXT and first["answer"] == "C" and first["letters"] == "ABC"
    assert second["answer"] == "C" and second["letters"] == "ABCD"
    assert "answer" not in third and third["completion_tokens"] >= 1

    assert httpx.get(f"{url}/v1/models/{SERVED_NAME}", timeout=10).json() == {"name": SERVED_NAME, "ready": True}
    v2 = httpx.post(
        f"{url}/v2/models/{SERVED_NAME}/infer",
        json={
            "inputs": [{"name": "text_input", "shape": [2], "datatype": "BYTES", "data": ["The answer is", QUESTION]}],
            "parameters": {"max_tokens": 6, "temperature": 0},
        },
        timeout=60,
    )
    assert v2.status_code == 200, v2.text
    outputs = {o["name"]: o for o in v2.json()["outputs"]}
    assert outputs["text_output"]["shape"] == [2] and len(outputs["text_output"]["data"]) == 2
    assert outputs["answer"]["data"][0] == ""  # not a multiple-choice question
    assert httpx.get(f"{url}/v2/health/live", timeout=10).json() == {"live": True}


LONG_PROMPT = "seizures ataxia hypotonia " * 200
BAD_REQUESTS = [
    # (name, method, path, body: dict | bytes, status, OpenAI error code or None)
    ("malformed JSON", "POST", "/openai/v1/chat/completions", b'{"model": ', 400, "invalid_json"),
    ("not an object", "POST", "/openai/v1/completions", b"[1, 2]", 400, "invalid_json"),
    ("missing messages", "POST", "/openai/v1/chat/completions", {"model": SERVED_NAME}, 400, "missing_field"),
    ("missing model", "POST", "/openai/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 400,
     "missing_field"),
    ("missing prompt", "POST", "/openai/v1/completions", {"model": SERVED_NAME}, 400, "invalid_value"),  # vLLM's check
    ("unknown model", "POST", "/openai/v1/chat/completions", chat_body(model="gpt-4"), 404, "model_not_found"),
    ("max_tokens over limit", "POST", "/openai/v1/chat/completions", chat_body(max_tokens=100_000), 400,
     "limit_exceeded"),
    ("n over limit", "POST", "/openai/v1/chat/completions", chat_body(n=50), 400, "limit_exceeded"),
    ("n zero", "POST", "/openai/v1/chat/completions", chat_body(n=0), 400, "invalid_value"),
    ("max_tokens zero", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": "x", "max_tokens": 0}, 400,
     "invalid_value"),
    ("empty prompt", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": ""}, 400, "invalid_value"),
    ("empty messages", "POST", "/openai/v1/chat/completions", {"model": SERVED_NAME, "messages": []}, 400, "invalid_value"),
    ("image part", "POST", "/openai/v1/chat/completions", {"model": SERVED_NAME, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://127.0.0.1:1/x.png"}}]}]}, 400, "invalid_type"),
    ("sampling field no engine honours", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": "x", "min_p": 0.1},
     400, "unsupported"),
    ("prompt too long", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": LONG_PROMPT}, 400,
     "context_length_exceeded"),
    ("bad type", "POST", "/openai/v1/chat/completions", chat_body(temperature="hot"), 400, "invalid_type"),
    ("bad role", "POST", "/openai/v1/chat/completions",
     {"model": SERVED_NAME, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value"),
    ("stream not a boolean", "POST", "/openai/v1/chat/completions", chat_body(stream="perhaps"), 400, "invalid_type"),
    ("stream_options without stream", "POST", "/openai/v1/completions",
     {"model": SERVED_NAME, "prompt": "x", "stream_options": {"include_usage": True}}, 400, "invalid_value"),
    ("vote n disagrees with n", "POST", "/openai/v1/chat/completions", chat_body(n=2, medssr={"n": 3}), 400,
     "invalid_value"),
    ("unknown extension field", "POST", "/openai/v1/chat/completions", chat_body(medssr={"votes": 3}), 400,
     "invalid_value"),
    ("abstain_below over 1", "POST", "/openai/v1/chat/completions", chat_body(medssr={"abstain_below": 2}), 400,
     "invalid_value"),
    ("body too large", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": "x" * 1_100_000}, 413,
     "body_too_large"),
    ("v1 malformed JSON", "POST", f"/v1/models/{SERVED_NAME}:predict", b"{nope", 400, None),
    ("v1 missing instances", "POST", f"/v1/models/{SERVED_NAME}:predict", {"parameters": {}}, 400, None),
    ("v1 instance without text", "POST", f"/v1/models/{SERVED_NAME}:predict", {"instances": [{"foo": 1}]}, 400, None),
    ("v1 bad options", "POST", f"/v1/models/{SERVED_NAME}:predict",
     {"instances": [{"question": "q", "options": {"A": "x", "C": "y"}}]}, 400, None),
    ("v1 max_tokens over limit", "POST", f"/v1/models/{SERVED_NAME}:predict",
     {"instances": ["x"], "parameters": {"max_tokens": 9999}}, 400, None),
    ("v1 unknown model", "POST", "/v1/models/nope:predict", {"instances": ["x"]}, 404, None),
    ("v2 malformed JSON", "POST", f"/v2/models/{SERVED_NAME}/infer", b"{nope", 400, None),
    ("v2 wrong type", "POST", f"/v2/models/{SERVED_NAME}/infer",
     {"inputs": [{"name": "text_input", "shape": "one", "datatype": "BYTES", "data": ["x"]}]}, 400, None),
    ("unknown OpenAI route", "GET", "/openai/v1/engines", None, 404, "not_found"),
    ("unknown route", "GET", "/v3/models", None, 404, None),
    ("wrong method", "DELETE", "/openai/v1/models", None, 405, None),
    ("unknown model retrieved", "GET", "/openai/v1/models/gpt-4", None, 404, "model_not_found"),
    ("tools", "POST", "/openai/v1/chat/completions",
     chat_body(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}], tool_choice="required"), 400,
     "unsupported"),
    ("response_format", "POST", "/openai/v1/chat/completions", chat_body(response_format={"type": "json_object"}), 400,
     "unsupported"),
    ("suffix", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": "x", "suffix": "y"}, 400, "unsupported"),
    ("token id outside the vocabulary", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": [1, 10**6]}, 400,
     "invalid_value"),
    ("logit_bias outside the vocabulary", "POST", "/openai/v1/completions",
     {"model": SERVED_NAME, "prompt": "x", "logit_bias": {"1000000": 5}}, 400, "invalid_value"),
    ("logit_bias over 100", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": "x", "logit_bias": {"5": 101}},
     400, "invalid_value"),
    ("penalty over 2", "POST", "/openai/v1/chat/completions", chat_body(presence_penalty=2.5), 400, "invalid_value"),
    ("top_logprobs without logprobs", "POST", "/openai/v1/chat/completions", chat_body(top_logprobs=2), 400, "invalid_value"),
    ("logprobs over 20", "POST", "/openai/v1/completions", {"model": SERVED_NAME, "prompt": "x", "logprobs": 21}, 400,
     "limit_exceeded"),
    ("v2 wrong input name", "POST", f"/v2/models/{SERVED_NAME}/infer",
     {"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 400, None),
    ("v2 unknown model", "POST", "/v2/models/nope/infer",
     {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}, 404, None),
]


@pytest.mark.slow
def test_every_bad_request_gets_its_4xx_and_the_server_stays_up(kserve_server):
    failures = []
    with httpx.Client(base_url=kserve_server.url, timeout=60) as client:
        for name, method, path, body, status, code in BAD_REQUESTS:
            if isinstance(body, bytes):
                response = client.request(method, path, content=body, headers={"content-type": "application/json"})
            else:
                response = client.request(method, path, json=body)
            if response.status_code != status:
                failures.append(f"{name}: {response.status_code} {response.text[:200]}")
                continue
            error = response.json().get("error")
            if path.startswith("/openai/"):  # OpenAI's shape on every OpenAI route
                assert isinstance(error, dict) and error["message"] and error["type"], f"{name}: {response.text}"
                if code is not None and error["code"] != code:
                    failures.append(f"{name}: code {error['code']!r} != {code!r}")
            else:  # KServe's
                assert isinstance(error, str) and error, f"{name}: no error message in {response.text}"
            assert_serving(kserve_server)
    assert not failures, "\n".join(failures)
    assert "Traceback" not in kserve_server.log_path.read_text(), "a client error was logged with a traceback"
    ok = httpx.post(f"{kserve_server.url}/openai/v1/chat/completions", json=chat_body(max_tokens=8), timeout=60)
    assert ok.status_code == 200 and ok.json()["medssr"]["answer"] == "C"


ODD_REQUESTS = [
    # (name, path, raw JSON body, the field the 400 names)
    ("lone surrogate in a chat message", "/openai/v1/chat/completions",
     f'{{"model": "{SERVED_NAME}", "messages": [{{"role": "user", "content": "hi \\ud800"}}]}}', "messages"),
    ("lone surrogate in a prompt", "/openai/v1/completions", f'{{"model": "{SERVED_NAME}", "prompt": "hi \\ud800"}}', "prompt"),
    ("lone surrogate in a v2 input", f"/v2/models/{SERVED_NAME}/infer",
     '{"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hi \\ud800"]}]}', "text_input"),
    ("seed 2**63", "/openai/v1/completions", f'{{"model": "{SERVED_NAME}", "prompt": "hi", "seed": {2**63}}}', "seed"),
    ("v1 seed 2**64", f"/v1/models/{SERVED_NAME}:predict", f'{{"instances": ["hi"], "parameters": {{"seed": {2**64}}}}}', "seed"),
    ("v2 seed 2**64", f"/v2/models/{SERVED_NAME}/infer",
     f'{{"inputs": [{{"name": "text_input", "shape": [1], "datatype": "BYTES", "data": ["hi"]}}], "parameters": {{"seed": {2**64}}}}}',
     "seed"),
]


@pytest.mark.slow
def test_odd_text_and_out_of_range_seeds_get_400_naming_the_field(kserve_server):
    failures = []
    for name, path, body, field in ODD_REQUESTS:
        response = httpx.post(f"{kserve_server.url}{path}", content=body.encode(), timeout=60,
                              headers={"content-type": "application/json"})
        error = response.json().get("error") if response.status_code < 500 else None
        message = error["message"] if isinstance(error, dict) else error
        if response.status_code != 400 or f"'{field}'" not in str(message):
            failures.append(f"{name}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)
    largest = {"model": SERVED_NAME, "prompt": "hi", "seed": 2**63 - 1, "max_tokens": 2}  # vLLM's schema: int64
    assert httpx.post(f"{kserve_server.url}/openai/v1/completions", json=largest, timeout=60).status_code == 200
    assert_serving(kserve_server)


def _post_while_sending(port: int, path: str, body_chunks, headers: str, on_first_chunk=None) -> tuple[str, bool, list]:
    """POST ``body_chunks`` from a thread; returns the status line, whether the whole body had been sent
    by the time the status line arrived, and what ``on_first_chunk`` returned (called once the upload is
    under way)."""
    connection = socket.create_connection(("127.0.0.1", port))
    sent_all = threading.Event()
    first_sent = threading.Event()

    def upload():
        try:
            connection.sendall(f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{headers}\r\n".encode())
            for chunk in body_chunks:
                connection.sendall(chunk)
                first_sent.set()
            sent_all.set()
        except OSError:  # the server answered and closed the connection mid-body
            first_sent.set()

    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    first_sent.wait(60)
    seen = [on_first_chunk()] if on_first_chunk else []
    connection.settimeout(120)
    received = b""
    while b"\r\n" not in received:
        data = connection.recv(65536)
        if not data:
            break
        received += data
    finished_first = sent_all.is_set()
    connection.close()
    sender.join(30)
    return received.split(b"\r\n")[0].decode(), finished_first, seen


@pytest.mark.slow
@pytest.mark.parametrize("path", [f"/v1/models/{SERVED_NAME}:predict", f"/v2/models/{SERVED_NAME}/infer"])
def test_a_20_mb_body_gets_413_before_it_is_read_and_health_answers_meanwhile(kserve_server, path):
    port = int(kserve_server.url.rsplit(":", 1)[1])
    size, piece = 20_000_000, b"x" * 500_000
    pieces = [piece] * (size // len(piece))

    status, body_sent_first, _ = _post_while_sending(port, path, pieces, f"Content-Length: {size}\r\n")
    assert status.startswith("HTTP/1.1 413"), status
    assert not body_sent_first, "the server read the whole body before refusing it"

    # Without a Content-Length (chunked): refused once the bytes pass the limit; health answers mid-upload.
    chunked = (f"{len(piece):x}\r\n".encode() + piece + b"\r\n" for _ in pieces)
    health = lambda: httpx.get(f"{kserve_server.url}/v2/health/ready", timeout=30).status_code  # noqa: E731
    status, body_sent_first, seen = _post_while_sending(port, path, chunked, "Transfer-Encoding: chunked\r\n", health)
    assert status.startswith("HTTP/1.1 413"), status
    assert not body_sent_first, "the server read the whole chunked body before refusing it"
    assert seen == [200]
    metrics = httpx.get(f"{kserve_server.url}/metrics", timeout=10).text
    assert _metric(metrics, 'medssr_serving_rejected_total{reason="body_too_large"}') >= 2
    assert_serving(kserve_server)


async def _post_many(url: str, bodies: list[dict], concurrency: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(client.post("/openai/v1/chat/completions", json=body) for body in bodies))


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.slow
def test_32_concurrent_clients_are_batched_without_errors(kserve_server):
    before = httpx.get(f"{kserve_server.url}/metrics", timeout=10).text
    responses = asyncio.run(_post_many(kserve_server.url, [chat_body(max_tokens=8) for _ in range(32)], 32))
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 32, statuses
    assert all(r.json()["medssr"]["answer"] == "C" for r in responses)
    after = httpx.get(f"{kserve_server.url}/metrics", timeout=10).text
    shared = lambda text: _metric(text, "medssr_serving_step_rows_count") - _metric(text, 'medssr_serving_step_rows_bucket{le="1.0"}')  # noqa: E731
    assert shared(after) > shared(before)  # forward passes decoded several requests' rows together
    assert _metric(after, "medssr_serving_generated_tokens_total") > _metric(before, "medssr_serving_generated_tokens_total")
    assert 'medssr_serving_requests_total{route="/openai/v1/chat/completions",status="200"}' in after
    assert "medssr_serving_request_seconds_bucket" in after
    assert_serving(kserve_server)


@pytest.mark.slow
def test_overload_is_refused_with_429_not_queued(kserve_server):
    # 64 long generations against 8 per batch and 32 waiting: the excess must be refused at once.
    body = chat_body(max_tokens=256, min_tokens=256)
    responses = asyncio.run(_post_many(kserve_server.url, [body] * 64, 64))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    refused = [r for r in responses if r.status_code == 429]
    assert refused and statuses.count(200) >= 8, statuses
    assert refused[0].headers["retry-after"] == "1"
    assert refused[0].json()["error"]["code"] == "server_overloaded"
    metrics = httpx.get(f"{kserve_server.url}/metrics", timeout=10).text
    assert _metric(metrics, 'medssr_serving_rejected_total{reason="queue_full"}') >= len(refused)
    assert_serving(kserve_server)



@pytest.mark.slow
def test_prompts_of_clients_that_gave_up_never_reach_the_model(kserve_server):
    metrics = lambda: httpx.get(f"{kserve_server.url}/metrics", timeout=10).text  # noqa: E731
    before = _metric(metrics(), "medssr_serving_abandoned_total")

    async def impatient_clients():
        async with httpx.AsyncClient(base_url=kserve_server.url, timeout=0.3) as client:
            # n=4 x 256 forced tokens keeps each batch busy; a few may be refused (queue full), never a 5xx
            body = chat_body(max_tokens=256, min_tokens=256, n=4)
            return await asyncio.gather(
                *(client.post("/openai/v1/chat/completions", json=body) for _ in range(40)), return_exceptions=True
            )

    outcomes = asyncio.run(impatient_clients())
    gave_up = sum(isinstance(o, httpx.TimeoutException) for o in outcomes)
    answered = sum(isinstance(o, httpx.Response) and o.status_code in (200, 429) for o in outcomes)
    assert gave_up + answered == len(outcomes), outcomes
    assert gave_up > 8, outcomes  # more clients gave up than one batch holds: some were still queued
    deadline = time.monotonic() + 30
    while _metric(metrics(), "medssr_serving_abandoned_total") < before + 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    # at least a batch worth of queued prompts was dropped instead of generated
    assert _metric(metrics(), "medssr_serving_abandoned_total") >= before + 8
    assert_serving(kserve_server)


@pytest.mark.slow
def test_medssr_ask_prints_reasoning_and_letter(kserve_server, capsys):
    from medssr.cli import main

    assert main(["ask", "--url", kserve_server.url, QUESTION, "--max-tokens", "16"]) == 0
    out = capsys.readouterr().out
    assert ANSWER_TEXT in out and out.strip().endswith("Answer: C. ATXN1")

    stem = "Which gene is most likely involved?"
    assert main(["ask", "--url", f"{kserve_server.url}/openai/v1", stem, "--option", "SCN1A", "--option", "MECP2",
                 "--option", "ATXN1", "--max-tokens", "16"]) == 0
    assert capsys.readouterr().out.strip().endswith("Answer: C. ATXN1")

    from medssr.serving.process import free_port

    assert main(["ask", "--url", f"http://127.0.0.1:{free_port()}", QUESTION, "--timeout", "5"]) == 2
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.slow
def test_registry_alias_resolves_to_a_loadable_model_folder(mlflow_server, tiny_model, tmp_path, monkeypatch):
    from medssr.models import resolve_model
    from medssr.registry import register_model_folder
    from medssr.tracking import Tracker, TrackingConfig

    tracker = Tracker(TrackingConfig(tracking_uri=mlflow_server.url, experiment="serve-test"))
    with tracker.stage("register", tracker.start_pipeline_run("run-serve")) as stage:
        register_model_folder(stage, "serve-tiny", tiny_model, alias="champion")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.chdir(tmp_path)  # the registry download cache goes under ./.medssr
    for reference in ("serve-tiny@champion", "models:/serve-tiny@champion"):
        folder = resolve_model(reference)
        assert (Path(folder) / "model.safetensors").is_file() and (Path(folder) / "tokenizer.json").is_file()
    with pytest.raises(ValueError, match="no such registered model version"):
        resolve_model("serve-tiny@nonexistent")
