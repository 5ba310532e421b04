"""The OpenAI contract of the running model server, through the official ``openai`` client: token-id
prompts, log-probabilities (echo with the prompt's own: what a loglikelihood evaluation reads), logit
bias, presence and frequency penalties, ``models.retrieve``, the ``developer`` role, the vote's
``permute_options``, and a 400 naming the field for what the server cannot honour. Values are checked against
the model's own forward pass."""

from __future__ import annotations

import httpx
import pytest

from tests.plugins.kserve_server import ANSWER_TEXT, SERVED_NAME
from tests.test_serving import QUESTION

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(kserve_server):
    import openai

    return openai.OpenAI(base_url=f"{kserve_server.url}/openai/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def reference(answering_model):
    """The served model and tokenizer in this process, to compute what the server should answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(answering_model, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(answering_model)


def _logprobs(model, ids: list[int]):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)


def penalised_greedy(model, tokenizer, prompt: list[int], presence: float, frequency: float, steps: int) -> str:
    """Greedy decoding of ``steps`` tokens (end of text barred, as min_tokens does) with the penalties subtracted
    from the logits of the tokens generated so far, on the model's own forward pass."""
    import torch

    ids, counts = list(prompt), torch.zeros(model.config.vocab_size)
    for _ in range(steps):
        logits = _logprobs(model, ids)[-1].clone()  # log-softmax: a shift of the logits, the same argmax
        logits[tokenizer.eos_token_id] = float("-inf")
        token = int((logits - frequency * counts - presence * (counts > 0)).argmax())
        ids.append(token)
        counts[token] += 1
    return tokenizer.decode(ids[len(prompt):], skip_special_tokens=True)


def test_token_prompt_with_echo_scores_every_prompt_token_as_the_forward_pass_does(client, reference):
    model, tokenizer = reference
    ids = tokenizer.encode("A patient presents with seizures and ataxia. Which gene?")
    response = client.completions.create(model=SERVED_NAME, prompt=ids, max_tokens=1, logprobs=2, echo=True, temperature=0)
    (choice,) = response.choices
    logprobs = choice.logprobs
    assert len(logprobs.token_logprobs) == len(ids) + 1 and logprobs.token_logprobs[0] is None
    assert logprobs.top_logprobs[0] is None
    expected = _logprobs(model, ids)
    for position in range(1, len(ids)):
        assert logprobs.token_logprobs[position] == pytest.approx(float(expected[position - 1, ids[position]]), abs=1e-4)
        top = expected[position - 1].topk(2).values.tolist()  # the sampled token's value comes first, then these
        assert sorted(logprobs.top_logprobs[position].values(), reverse=True)[:2] == pytest.approx(top, abs=1e-4)
    # The generated token: the greedy pick, scored by the model's distribution after the whole prompt.
    generated = int(expected[-1].argmax())
    assert logprobs.token_logprobs[-1] == pytest.approx(float(expected[-1, generated]), abs=1e-4)
    assert logprobs.token_logprobs[-1] == pytest.approx(max(logprobs.top_logprobs[-1].values()), abs=1e-6)
    assert choice.text == tokenizer.decode(ids) + tokenizer.decode([generated], skip_special_tokens=True)
    assert logprobs.tokens == [tokenizer.decode([t], skip_special_tokens=True) for t in [*ids, generated]]
    assert response.usage.prompt_tokens == len(ids)

    batch = client.completions.create(model=SERVED_NAME, prompt=[ids[:5], ids], max_tokens=2, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.prompt_tokens == 5 + len(ids)


def test_chat_logprobs_and_their_stream_match_the_reply(client, reference):
    model, tokenizer = reference
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16,
                                           logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    # every token, the end token ("": no text) included, as vLLM reports them
    assert "".join(entry.token for entry in content) == reply.choices[0].message.content == ANSWER_TEXT
    assert len(content) == reply.usage.completion_tokens
    prompt = tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                              add_special_tokens=False)
    first = _logprobs(model, prompt)[-1]
    assert content[0].logprob == pytest.approx(float(first.max()), abs=1e-4)
    assert [t.logprob for t in content[0].top_logprobs] == pytest.approx(first.topk(3).values.tolist(), abs=1e-4)
    assert all(len(entry.top_logprobs) == 3 for entry in content)

    stream = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16,
                                            logprobs=True, top_logprobs=3, stream=True)
    streamed = [entry for chunk in stream if chunk.choices and chunk.choices[0].logprobs
                for entry in chunk.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in content]

    plain = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_logit_bias_forces_and_bans_tokens(client, reference):
    model, tokenizer = reference
    prompt = tokenizer.encode("The answer is")
    (forced,) = tokenizer.encode("Z", add_special_tokens=False)
    reply = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=4, temperature=0,
                                      logit_bias={str(forced): 100})
    assert reply.choices[0].text == "Z" * 4
    scores = _logprobs(model, prompt)[-1]
    first, second = scores.topk(2).indices.tolist()
    banned = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=1, temperature=0,
                                       logit_bias={str(first): -100})
    assert banned.choices[0].text == tokenizer.decode([second])


@pytest.mark.parametrize("presence, frequency", [(1.5, 0.0), (0.0, 0.7), (0.4, 0.9)])
def test_penalties_change_greedy_decoding_exactly_as_defined(client, reference, presence, frequency):
    """Greedy decoding with the penalties subtracted from the logits of tokens already generated (presence once,
    frequency per occurrence), computed here step by step on the model's forward pass."""
    model, tokenizer = reference
    prompt = tokenizer.encode("seizures seizures ataxia")
    expected = penalised_greedy(model, tokenizer, prompt, presence, frequency, steps=12)
    reply = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=12, temperature=0,
                                      presence_penalty=presence, frequency_penalty=frequency, extra_body={"min_tokens": 12})
    assert reply.choices[0].text == expected
    unpenalised = client.completions.create(model=SERVED_NAME, prompt=prompt, max_tokens=12, temperature=0,
                                            extra_body={"min_tokens": 12})
    assert unpenalised.choices[0].text != expected


def test_models_retrieve_and_the_developer_role(client):
    import openai

    assert client.models.retrieve(SERVED_NAME).id == SERVED_NAME
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4")
    assert missing.value.body["code"] == "model_not_found"
    reply = client.chat.completions.create(
        model=SERVED_NAME, temperature=0, max_tokens=16,
        messages=[{"role": "developer", "content": "Answer with one letter."}, {"role": "user", "content": QUESTION}])
    assert reply.choices[0].message.content == ANSWER_TEXT  # read as the system message the model learned


@pytest.mark.parametrize("field, value", [
    ("tools", [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]),
    ("tool_choice", "required"),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
    ("response_format", {"type": "json_object"}),
])
def test_what_the_server_cannot_honour_is_refused_naming_the_field(client, field, value):
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       **{field: value})
    assert refused.value.body["param"] == field and field in refused.value.body["message"]


def test_v2_metadata_lists_the_tensors(kserve_server):
    metadata = httpx.get(f"{kserve_server.url}/v2/models/{SERVED_NAME}", timeout=10).json()
    assert {"name": "text_input", "datatype": "BYTES", "shape": [-1]} in metadata["inputs"]
    assert {o["name"] for o in metadata["outputs"]} == {"text_output", "answer", "completion_tokens"}


def test_permute_options_asks_each_sample_its_own_order_and_votes_in_the_question_s_letters(client, kserve_server):
    """``medssr.permute_options``: each of the n samples reads the question with its options in the order
    ``option_orders`` gives for the seed, and its letter is mapped back to the question's. The tiny model says C
    whatever it is asked; in four orders that put each option at C once, its votes spread over all four letters,
    where the fixed order gives C all four."""
    import openai

    from medssr.answers import extract_answer, option_orders, original_letter, shown_options
    from medssr.data import parse_question_text

    stem, options = parse_question_text(QUESTION)
    question = "\n".join([stem, *(f"{letter}. {text}" for letter, text in options.items())])
    messages = [{"role": "user", "content": QUESTION}]

    def vote(seed: int):
        reply = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16,
                                               extra_body={"medssr": {"n": 4, "permute_options": True, "permutation_seed": seed}})
        return reply, reply.model_extra["medssr"]

    reply, summary = vote(5)
    orders = option_orders("ABCD", 4, 5, question)
    assert summary["permutation"]["seed"] == 5 and summary["permutation"]["orders"] == ["".join(o) for o in orders]
    texts = [choice.message.content for choice in reply.choices]
    assert texts == [ANSWER_TEXT] * 4
    shown = [extract_answer(text, "ABCD", "lenient", shown_options(options, order)) for text, order in zip(texts, orders)]
    assert summary["permutation"]["shown_answers"] == shown == ["C"] * 4
    assert summary["answers"] == [original_letter("C", "ABCD", order) for order in orders] == [order[2] for order in orders]
    assert summary["votes"] == {"A": 1, "B": 1, "C": 1, "D": 1} and summary["majority"] is None and summary["agreement"] == 0.25
    assert vote(5)[1]["permutation"]["orders"] == summary["permutation"]["orders"]
    assert vote(3)[1]["permutation"]["orders"] != summary["permutation"]["orders"]
    fixed = client.chat.completions.create(model=SERVED_NAME, messages=messages, temperature=0, max_tokens=16,
                                           extra_body={"medssr": {"n": 4}}).model_extra["medssr"]
    assert fixed["votes"] == {"C": 4} and "permutation" not in fixed

    # Completions, streamed: the last chunk carries the vote, read from the text each choice streamed.
    chunks = list(client.completions.create(model=SERVED_NAME, prompt=QUESTION, max_tokens=8, temperature=1.0, seed=2,
                                            n=3, stream=True, extra_body={"medssr": {"permute_options": True}}))
    streamed = [""] * 3
    for chunk in chunks:
        for choice in chunk.choices:
            streamed[choice.index] += choice.text
    summary = chunks[-1].model_extra["medssr"]
    orders = option_orders("ABCD", 3, 0, question)
    assert summary["permutation"]["orders"] == ["".join(o) for o in orders] and summary["permutation"]["seed"] == 0
    assert summary["answers"] == [original_letter(extract_answer(text, "ABCD", "lenient", shown_options(options, order)), "ABCD", order)
                                  for text, order in zip(streamed, orders)]

    # KServe v1: a question with its options as fields.
    v1 = httpx.post(f"{kserve_server.url}/v1/models/{SERVED_NAME}:predict", timeout=60, json={
        "instances": [{"question": stem, "options": list(options.values())}],
        "parameters": {"temperature": 0, "max_tokens": 16, "medssr": {"n": 4, "permute_options": True}}})
    (prediction,) = v1.json()["predictions"]
    assert prediction["permutation"]["orders"] == ["".join(o) for o in option_orders("ABCD", 4, 0, question)]
    assert prediction["answers"] == [order[2] for order in option_orders("ABCD", 4, 0, question)]

    # Nothing to re-order: a 400 naming the field, on both routes.
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "hello"}], max_tokens=2,
                                       extra_body={"medssr": {"permute_options": True}})
    assert refused.value.body["param"] == "medssr.permute_options" and "'messages'" in refused.value.body["message"]
    refused = httpx.post(f"{kserve_server.url}/v1/models/{SERVED_NAME}:predict", timeout=60,
                         json={"instances": ["hello"], "parameters": {"medssr": {"permute_options": True}}})
    assert refused.status_code == 400 and "medssr.permute_options" in refused.json()["error"]
