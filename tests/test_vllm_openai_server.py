"""vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``, the engine behind a deployed endpoint
on GPUs) on 127.0.0.1, vLLM's CPU build, asked through the official ``openai`` client what medssr's clients and
serving tests ask: completions from text and token-id prompts with echoed log-probabilities, chat with
log-probabilities, streamed and not, several samples, logit bias and penalties. Values are checked against the
model's own forward pass; the server stops and leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.plugins.kserve_server import ANSWER_TEXT, SERVED_NAME
from tests.test_serving import QUESTION
from tests.test_serving_openai import _logprobs, penalised_greedy

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (`make vllm`)")

START_TIMEOUT_S = 300  # a guard; the server answers in about a minute on a busy 2-core machine


@pytest.fixture(scope="module")
def vllm_server(answering_model, tmp_path_factory):
    from medssr.serving.process import free_port
    from tests.test_vllm_generation import alive_processes, process_tree

    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(answering_model),
        "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--max-model-len", "512", "--kv-cache-memory-bytes", str(256 << 20), "--enforce-eager", "--seed", "0",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"vLLM's server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"vLLM's server did not answer in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
        time.sleep(1)
    tree = process_tree(process.pid)
    yield url
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while tree & alive_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not tree & alive_processes(), "vLLM's server left processes behind"


@pytest.fixture(scope="module")
def client(vllm_server):
    import openai

    return openai.OpenAI(base_url=f"{vllm_server}/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def reference(answering_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(answering_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(answering_model)


def test_models_and_a_chat_answer_streamed_and_not(client):
    assert [model.id for model in client.models.list().data] == [SERVED_NAME]
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16)
    assert reply.choices[0].message.content == ANSWER_TEXT and reply.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER_TEXT
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    sampled = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=1.0, max_tokens=16, n=3)
    assert [choice.index for choice in sampled.choices] == [0, 1, 2]


def test_token_prompt_with_echo_scores_every_prompt_token_as_the_forward_pass_does(client, reference):
    model, tokenizer = reference
    ids = tokenizer.encode("A patient presents with seizures and ataxia. Which gene?")
    response = client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=1, logprobs=2, echo=True, temperature=0)
    (choice,) = response.choices
    logprobs = choice.logprobs
    assert len(logprobs.token_logprobs) == len(ids) + 1 and logprobs.token_logprobs[0] is None
    expected = _logprobs(model, ids)
    for position in range(1, len(ids)):
        assert logprobs.token_logprobs[position] == pytest.approx(float(expected[position - 1, ids[position]]), abs=1e-4)
    generated = int(expected[-1].argmax())
    assert logprobs.token_logprobs[-1] == pytest.approx(float(expected[-1, generated]), abs=1e-4)
    assert choice.text == tokenizer.decode(ids) + tokenizer.decode([generated])
    assert response.usage.prompt_tokens == len(ids)
    batch = client.completions.create(model=SERVED_NAME, prompt=[ids[:5], ids], max_tokens=2, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.prompt_tokens == 5 + len(ids)


def test_text_completion_streamed_and_not_agree(client, reference):
    model, tokenizer = reference
    prompt = "The answer is"
    whole = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=8, temperature=0, extra_body={"min_tokens": 8})
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model=SERVED_NAME, prompt=prompt, max_tokens=8, temperature=0, stream=True, extra_body={"min_tokens": 8}) if chunk.choices)
    assert streamed == whole.choices[0].text and whole.usage.completion_tokens == 8
    first = int(_logprobs(model, tokenizer.encode(prompt))[-1].argmax())
    assert whole.choices[0].text.startswith(tokenizer.decode([first]))


def test_chat_logprobs_and_their_stream_match_the_reply(client, reference):
    model, tokenizer = reference
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    # vLLM's log-probabilities include the token that ended the turn; the message leaves it out.
    assert content[-1].token == tokenizer.eos_token
    assert "".join(entry.token for entry in content[:-1]) == reply.choices[0].message.content == ANSWER_TEXT
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False)
    first = _logprobs(model, prompt)[-1]
    assert content[0].logprob == pytest.approx(float(first.max()), abs=1e-4)
    assert [t.logprob for t in content[0].top_logprobs] == pytest.approx(first.topk(3).values.tolist(), abs=1e-4)
    stream = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16,
                                            logprobs=True, top_logprobs=3, stream=True)
    streamed = [entry for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for entry in chunk.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in content]


def test_logit_bias_forces_and_bans_tokens(client, reference):
    model, tokenizer = reference
    prompt = tokenizer.encode("The answer is")
    (forced,) = tokenizer.encode("Z", add_special_tokens=False)
    reply = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=4, temperature=0, logit_bias={str(forced): 100})
    assert reply.choices[0].text == "Z" * 4
    first, second = _logprobs(model, prompt)[-1].topk(2).indices.tolist()
    banned = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=1, temperature=0, logit_bias={str(first): -100})
    assert banned.choices[0].text == tokenizer.decode([second])


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.4, 0.9)])
def test_penalties_change_greedy_decoding_exactly_as_defined(client, reference, presence, frequency):
    model, tokenizer = reference
    prompt = tokenizer.encode("seizures seizures ataxia")
    expected = penalised_greedy(model, tokenizer, prompt, presence, frequency, steps=12)
    reply = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=12, temperature=0,
                                      presence_penalty=presence, frequency_penalty=frequency, extra_body={"min_tokens": 12})
    assert reply.choices[0].text == expected
