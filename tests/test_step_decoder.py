"""The server's step decoder on the real tiny model: rows that join a running batch (into finished rows'
places or appended) decode exactly what each prompt decodes alone, and the text released step by step
is the text of the ids."""

from __future__ import annotations

import random

import pytest

from medssr.generation.base import SamplingParams


@pytest.fixture(scope="module")
def generator(tiny_model):
    import torch

    from medssr.generation import GeneratorConfig, build_generator

    torch.set_num_threads(1)
    return build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=8, device="cpu", progress=False))


def _prompts(generator, count: int, seed: int = 0) -> list[list[int]]:
    words = "patient fever rash enzyme deficiency which gene presents with the most likely diagnosis".split()
    rng = random.Random(seed)
    return [generator.tokenizer.encode(" ".join(rng.choice(words) for _ in range(rng.randint(3, 40)))) for _ in range(count)]


def _decode(generator, arrivals: dict[int, list], max_rows: int) -> dict:
    """Run a StepDecoder, admitting ``arrivals[step]`` jobs before that step (when they fit); the ids and the
    released text of every (job, sample)."""
    from medssr.generation.step_decoder import StepDecoder

    decoder = StepDecoder(generator, max_rows=max_rows)
    waiting, step, texts, tokens, logits = [], 0, {}, {}, {}
    while step <= max(arrivals) or waiting or decoder.rows:
        waiting += arrivals.get(step, [])
        admitted = []
        while waiting and decoder.rows + sum(job.samples for job in admitted) + waiting[0].samples <= max_rows:
            admitted.append(waiting.pop(0))
        decoder.admit(admitted)
        for delta in decoder.step():
            texts[delta.key, delta.sample] = texts.get((delta.key, delta.sample), "") + delta.text
            tokens[delta.key, delta.sample] = delta.tokens
        running = decoder._running
        for row in running.alive.nonzero().squeeze(1).tolist():  # the next-token logits each row has reached
            logits[(*running.owners[row], int(running.made[row]))] = running.logits[row].clone()
        step += 1
    return {"texts": texts, "tokens": tokens, "logits": logits}


@pytest.mark.slow
def test_rows_joining_a_running_batch_decode_what_each_prompt_decodes_alone(generator):
    import torch

    from medssr.generation.step_decoder import DecodeJob

    prompts = _prompts(generator, 12)
    lengths = [random.Random(k).randint(2, 24) for k in range(12)]

    def job(k, samples=1):
        return DecodeJob(key=k, prompt_ids=prompts[k], samples=samples, sampling=SamplingParams(temperature=0, max_tokens=lengths[k]),
                         min_tokens=lengths[k])

    # Staggered: short and long prompts arrive while others decode, so rows fill finished places (when the
    # prompt fits the batch's width), are appended (when it does not), or wait for room.
    together = _decode(generator, {0: [job(0), job(1, samples=2)], 3: [job(2), job(3)], 5: [job(4), job(5)], 9: [job(6)],
                                   10: [job(7), job(8)], 14: [job(9), job(10, samples=2)], 20: [job(11)]}, max_rows=5)
    for k in range(12):
        alone = _decode(generator, {0: [job(k)]}, max_rows=1)
        assert together["texts"][k, 0] == alone["texts"][k, 0], f"job {k}"
        assert together["tokens"][k, 0] == alone["tokens"][k, 0] == lengths[k]
        for (key, sample, made), expected in alone["logits"].items():
            assert torch.allclose(together["logits"][key, 0, made], expected, atol=1e-4), f"job {k} after {made} tokens"
    assert together["texts"][1, 1] == together["texts"][1, 0] and together["texts"][10, 1] == together["texts"][10, 0]


@pytest.mark.slow
def test_bf16_rows_joining_through_the_fused_prefill_and_step_decode_what_the_forward_pass_decodes(tiny_model):
    """bf16 weights (as served with --dtype bfloat16): joins prefilled by the fused step's one pass and
    decoded by its steps give the forward pass's texts and logits, bit for bit."""
    import torch

    from medssr.generation import GeneratorConfig, build_generator
    from medssr.generation.step_decoder import DecodeJob

    fused, plain = (build_generator(GeneratorConfig(model=str(tiny_model), batch_size=8, progress=False, dtype="bfloat16",
                                                    fused_decode=on)) for on in (True, False))
    assert fused._fused_step is not None and fused._fused_step.prefills() and plain._fused_step is None
    prompts = _prompts(fused, 8, seed=1)

    def job(k):
        return DecodeJob(key=k, prompt_ids=prompts[k], samples=1 + k % 2, sampling=SamplingParams(temperature=0, max_tokens=4 + 3 * k),
                         min_tokens=4 + 3 * k)

    arrivals = {0: [job(0), job(1)], 2: [job(2)], 4: [job(3), job(4)], 7: [job(5)], 11: [job(6), job(7)]}
    ours, theirs = _decode(fused, arrivals, max_rows=6), _decode(plain, arrivals, max_rows=6)
    assert ours["texts"] == theirs["texts"] and ours["tokens"] == theirs["tokens"]
    assert ours["logits"].keys() == theirs["logits"].keys()
    for key, expected in theirs["logits"].items():
        torch.testing.assert_close(ours["logits"][key], expected, rtol=0, atol=0)


@pytest.mark.slow
def test_released_text_is_the_text_of_the_ids_including_characters_split_over_tokens(generator):
    from medssr.generation.step_decoder import DecodeJob, StepDecoder, _Sample

    decoder = StepDecoder(generator, max_rows=1)
    tokenizer = generator.tokenizer
    text = "Fièvre méditerranéenne familiale — 家族性地中海熱 (FMF) ✓ 🧬 ok. Gaucher, type 1; " * 3
    ids = tokenizer.encode(text, add_special_tokens=False)
    job = DecodeJob(key="k", prompt_ids=[1], samples=1, sampling=SamplingParams(temperature=0, max_tokens=len(ids) + 1))
    decoder._jobs["k"] = job
    decoder._samples["k", 0] = _Sample()
    released = ""
    for made, token in enumerate(ids, start=1):
        delta = decoder._advance("k", 0, token, False, made)
        released += delta.text
        assert "\ufffd" not in released and tokenizer.decode(ids[:made]).startswith(released)
    assert released + decoder._advance("k", 0, tokenizer.eos_token_id, True, len(ids) + 1).text == tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
def test_log_probabilities_are_the_forward_pass_s_for_rows_joining_a_batch_and_for_the_prompt(generator, monkeypatch):
    """A job's sampled tokens are scored by the model's own distribution (bias and penalties change what is
    picked, not the score), beside rows of other settings; its prompt's tokens in chunks of positions."""
    import torch

    from medssr.generation import step_decoder
    from medssr.generation.step_decoder import DecodeJob, StepDecoder

    monkeypatch.setattr(step_decoder, "PROMPT_LOGPROBS_CHUNK", 5)  # a 23-token prompt in five passes
    prompts = _prompts(generator, 3, seed=4)
    prompts[0] = (prompts[0] * 4)[:23]
    decoder = StepDecoder(generator, max_rows=4)
    greedy = SamplingParams(temperature=0, max_tokens=6)
    decoder.admit([DecodeJob(key=0, prompt_ids=prompts[0], samples=1, sampling=greedy, min_tokens=6, logprobs=3, prompt_logprobs=2,
                             logit_bias={7: 3.0}, frequency_penalty=1.0),
                   DecodeJob(key=1, prompt_ids=prompts[1], samples=2, sampling=SamplingParams(temperature=1.0, top_p=1.0, top_k=0,
                                                                                             max_tokens=6, seed=1))])
    generated: list[int] = []
    scores = []
    prompt_scores = None
    while decoder.rows:
        if len(generated) == 2:  # a row joins mid-decode
            decoder.admit([DecodeJob(key=2, prompt_ids=prompts[2], samples=1, sampling=greedy)])
        for delta in decoder.step():
            assert (delta.logprob is None) == (delta.key != 0)
            if delta.key == 0:
                generated.append(delta.token)
                scores.append(delta.logprob)
                prompt_scores = delta.prompt_logprobs if prompt_scores is None else prompt_scores
    with torch.inference_mode():
        ids = prompts[0] + generated
        expected = generator.model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    counts = torch.zeros(expected.shape[-1])
    for step, (token, score) in enumerate(zip(generated, scores)):
        row = expected[len(prompts[0]) - 1 + step]
        assert score.token == token and score.logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert [t for t, _ in score.top] == row.topk(3).indices.tolist()
        adjusted = row.clone()
        adjusted[7] += 3.0
        adjusted -= counts
        adjusted[generator.eos_token_ids] = float("-inf")
        assert token == int(adjusted.argmax())
        counts[token] += 1
    assert prompt_scores[0] is None and len(prompt_scores) == len(prompts[0])
    for position in range(1, len(prompts[0])):
        assert prompt_scores[position].logprob == pytest.approx(float(expected[position - 1, prompts[0][position]]), abs=1e-4)
        assert [t for t, _ in prompt_scores[position].top] == expected[position - 1].topk(2).indices.tolist()
