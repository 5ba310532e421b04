import time
from pathlib import Path

import pytest

from medssr.generation import GeneratorConfig, SamplingParams, build_generator
from medssr.errors import UserError
from medssr.models import resolve_model

CHAT = [{"role": "system", "content": "You are a medical expert."}, {"role": "user", "content": "Which gene is causal?"}]
PROMPTS = [
    "A patient presents with seizures, ataxia and hypotonia.",
    CHAT,
    "The answer is",
    [{"role": "user", "content": "What is the mode of inheritance of this rare disease of the nervous system?"}],
    "Which diagnosis is most likely?",
]
SAMPLE = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=8, seed=7)
GREEDY = SamplingParams(temperature=0, max_tokens=8)


@pytest.fixture(scope="module")
def generator(tiny_model):
    # float32 throughout this file: dtype auto would be bf16 on a CPU with native bf16 (medssr.cpu), another decode path
    return build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=4, progress=False))


def test_n_samples_per_prompt_in_prompt_order(generator):
    out = generator.generate(PROMPTS, n=3, sampling=SAMPLE)
    assert len(out) == len(PROMPTS) and all(len(samples) == 3 for samples in out)
    assert all(isinstance(text, str) for samples in out for text in samples)
    # Random sampling from a random model: the three samples of a prompt are not all the same.
    assert any(len(set(samples)) > 1 for samples in out)
    # Order is restored after sorting by length: each prompt's samples match a single-prompt call.
    alone = generator.generate([PROMPTS[1]], n=1, sampling=GREEDY)[0]
    assert generator.generate(PROMPTS, n=2, sampling=GREEDY)[1] == alone * 2


def test_chat_prompt_uses_the_chat_template(generator):
    ids = generator._encode(CHAT)
    text = generator.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nYou are a medical expert.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert generator._encode("plain text") == generator.tokenizer.encode("plain text")


def test_constrained_letters_only_return_allowed_letters(generator):
    out = generator.generate(PROMPTS, n=6, sampling=SamplingParams(temperature=1.0, top_k=20, allowed_letters=("B", "D"), seed=1))
    letters = {letter for samples in out for letter in samples}
    assert letters <= {"B", "D"} and all(len(samples) == 6 for samples in out)
    greedy = generator.generate(PROMPTS, n=2, sampling=SamplingParams(temperature=0, allowed_letters=("C",)))
    assert greedy == [["C", "C"]] * len(PROMPTS)


def test_letter_that_is_not_one_token_is_refused(generator):
    with pytest.raises(ValueError, match="allowed_letters"):
        generator.generate(["x"], sampling=SamplingParams(allowed_letters=("Bqzx",)))


def test_seed_makes_sampling_reproducible(generator):
    first = generator.generate(PROMPTS, n=2, sampling=SAMPLE)
    assert generator.generate(PROMPTS, n=2, sampling=SAMPLE) == first
    other = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=8, seed=8)
    assert generator.generate(PROMPTS, n=2, sampling=other) != first


def test_batched_greedy_equals_one_at_a_time(tiny_model, generator):
    one_by_one = build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=1, progress=False))
    assert generator.generate(PROMPTS, sampling=GREEDY) == one_by_one.generate(PROMPTS, sampling=GREEDY)


def test_padded_batch_prefill_equals_stacked_prefill(tiny_model, generator):
    """Models with sliding-window caches prefill one left-padded batch instead of stacking per-prompt caches."""
    padded = build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=4, progress=False))
    padded._stackable_cache = False
    assert padded.generate(PROMPTS, sampling=GREEDY) == generator.generate(PROMPTS, sampling=GREEDY)


@pytest.mark.parametrize("batch_size", [16, 4, 2])  # all in one batch; one prompt per batch; samples split
def test_shared_prefill_samples_match_greedy(tiny_model, batch_size):
    """Sampling reuses one prefilled cache for a prompt's n samples; with top_k=1 every sample must be
    exactly the greedy completion, which is computed without that cache."""
    sampler = build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=batch_size, progress=False))
    argmax = SamplingParams(temperature=1.0, top_k=1, max_tokens=8, seed=0)
    greedy = sampler.generate(PROMPTS, n=1, sampling=GREEDY)
    assert sampler.generate(PROMPTS, n=3, sampling=argmax) == [samples * 3 for samples in greedy]


def _record_passes(generator) -> list[tuple[int, int]]:
    """(rows, tokens) of every pass over the model, in order: each forward call (prefills, the shared
    prefix) and each decode step, whether the fused step or the model's forward computes it."""
    passes, in_step = [], []
    step = generator.step

    def counted(tokens, *args):
        passes.append((tokens.shape[0], 1))
        in_step.append(True)
        try:
            return step(tokens, *args)
        finally:
            in_step.pop()

    generator.step = counted
    generator.model.register_forward_pre_hook(
        lambda module, args, kwargs: None if in_step else passes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    return passes


def test_finished_rows_leave_the_batch(tiny_model):
    """A row that emits an end token stops costing compute: later forward passes carry only the rows
    still running, and dropping it leaves the other rows' completions unchanged."""
    import torch

    generator = build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=16, progress=False))
    passes = _record_passes(generator)
    rows_per_forward = lambda: [rows for rows, _ in passes]  # noqa: E731
    running = generator.generate(PROMPTS, sampling=GREEDY)
    prefill = [1] * len(PROMPTS)  # each prompt prefilled alone (no padding), then stacked
    assert rows_per_forward() == prefill + [len(PROMPTS)] * (GREEDY.max_tokens - 1)  # one pass per further token
    # Make the first token the first prompt emits an end token: that row must stop after it.
    with torch.inference_mode():
        first = generator.model(input_ids=torch.tensor([generator._encode(PROMPTS[0])])).logits[0, -1].argmax()
    generator.eos_token_ids = [int(first)]
    passes.clear()
    stopped = generator.generate(PROMPTS, sampling=GREEDY)
    assert stopped[0] == [generator.tokenizer.decode([int(first)], skip_special_tokens=True)] != running[0]
    assert stopped[1:] == running[1:]
    assert rows_per_forward() == prefill + [len(PROMPTS) - 1] * (GREEDY.max_tokens - 1)


def test_empty_prompt_list_and_bad_n(generator):
    assert generator.generate([], n=3) == []
    with pytest.raises(ValueError, match="n must be"):
        generator.generate(["x"], n=0)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend: unknown generation backend 'llamacpp'"):
        build_generator(GeneratorConfig(backend="llamacpp", model="x"))


def test_resolve_model_local_missing_and_hub_id(tiny_model, tmp_path):
    assert resolve_model(tiny_model) == str(tiny_model)
    with pytest.raises(UserError, match="no model folder"):
        resolve_model(tmp_path / "missing")
    assert resolve_model("Qwen/Qwen3-8B-Base") == "Qwen/Qwen3-8B-Base"


# --- openai backend against a real local HTTP server (tests/plugins/openai_server.py) ---------------

from medssr.dependencies import DependencyUnavailable  # noqa: E402
from medssr.generation.openai_backend import GenerationRequestError, validate_letter  # noqa: E402


def openai_config(server, **overrides) -> GeneratorConfig:
    settings = dict(backend="openai", model="tiny-medssr", base_url=server.base_url, api_key_env="MEDSSR_TEST_API_KEY",
                    timeout_s=30, concurrency=3, progress=False)
    return GeneratorConfig(**{**settings, **overrides})


def test_openai_backend_chat_and_text_prompts_match_local_generation(openai_server, generator):
    remote = build_generator(openai_config(openai_server))
    assert remote.generate(PROMPTS, n=2, sampling=GREEDY) == generator.generate(PROMPTS, n=2, sampling=GREEDY)
    paths = sorted(request["path"] for request in openai_server.requests)
    assert paths == ["/v1/chat/completions"] * 2 + ["/v1/completions"] * 3
    assert all(request["body"]["n"] == 2 and request["body"]["max_tokens"] == 8 for request in openai_server.requests)
    sampled = remote.generate(PROMPTS[:2], n=3, sampling=SAMPLE)
    assert [len(samples) for samples in sampled] == [3, 3]


def test_openai_backend_sends_the_key_from_the_named_env_var(openai_server, monkeypatch):
    monkeypatch.delenv("MEDSSR_TEST_API_KEY", raising=False)
    build_generator(openai_config(openai_server)).generate(["x"], sampling=GREEDY)
    monkeypatch.setenv("MEDSSR_TEST_API_KEY", "sk-test-123")
    build_generator(openai_config(openai_server)).generate(["x"], sampling=GREEDY)
    assert [request["authorization"] for request in openai_server.requests] == [None, "Bearer sk-test-123"]


def test_openai_backend_retries_503_then_succeeds(openai_server):
    openai_server.fail_next(2, 503)
    out = build_generator(openai_config(openai_server, max_retries=3)).generate(["The answer is"], sampling=GREEDY)
    assert len(out) == 1 and len(openai_server.requests) == 3


@pytest.mark.parametrize("status", [429, 503])
def test_openai_backend_waits_as_long_as_retry_after_says_and_announces_it(openai_server, status, caplog):
    """The openai client's own retry honours Retry-After (2 s here, where its backoff would wait 0.5 s, then 1 s)."""
    openai_server.fail_next(2, status, retry_after=2)
    with caplog.at_level("WARNING", logger="medssr.dependencies"):
        out = build_generator(openai_config(openai_server, max_retries=3)).generate(["The answer is"], sampling=GREEDY)
    arrivals = [request["at"] for request in openai_server.requests]
    assert len(out) == 1 and len(arrivals) == 3
    assert min(later - earlier for earlier, later in zip(arrivals, arrivals[1:])) >= 1.9
    notices = [r.getMessage() for r in caplog.records if r.name == "medssr.dependencies"]
    url = openai_server.base_url
    assert notices == [
        f"waiting for OpenAI-compatible endpoint at {url}: attempt {k} of 4 failed (HTTP {status}), attempt {k + 1} in 2.0 s "
        "(the wait is set by GeneratorConfig max_retries=3, connect_timeout_s=5, health_timeout_s=10, timeout_s=30)"
        for k in (1, 2)
    ]


def test_openai_backend_gives_up_after_its_retries(openai_server):
    openai_server.fail_next(5, 503)
    with pytest.raises(GenerationRequestError, match="refused the request after 3 attempts: HTTP 503"):
        build_generator(openai_config(openai_server, max_retries=2)).generate(["x"], sampling=GREEDY)
    assert len(openai_server.requests) == 3


def test_openai_backend_does_not_retry_a_400(openai_server):
    with pytest.raises(GenerationRequestError, match="HTTP 400.*not served") as caught:
        build_generator(openai_config(openai_server, model="no-such-model")).generate(["x"], sampling=GREEDY)
    assert caught.value.status == 400 and len(openai_server.requests) == 1
    openai_server.fail_next(1, 400)
    with pytest.raises(GenerationRequestError, match="HTTP 400"):
        build_generator(openai_config(openai_server)).generate(["x"], sampling=GREEDY)
    assert len(openai_server.requests) == 2


def test_a_stopped_openai_endpoint_is_one_error_naming_it_its_url_and_the_settings(caplog):
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/v1"  # nothing listens here once closed
    config = GeneratorConfig(backend="openai", model="m", base_url=url, progress=False)  # default retries and timeouts
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="medssr.dependencies"), pytest.raises(DependencyUnavailable) as caught:
        build_generator(config).generate(["x"], sampling=GREEDY)
    seconds = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"OpenAI-compatible endpoint at {url} is unreachable (")
    assert "the wait is set by GeneratorConfig max_retries=3, connect_timeout_s=5, health_timeout_s=10" in message
    assert seconds < 60  # the bound for a dead server with the defaults
    notices = [r.getMessage() for r in caplog.records if r.name == "medssr.dependencies"]
    assert [n.split(": attempt ")[1][:6] for n in notices] == ["1 of 4", "2 of 4", "3 of 4"]
    print(f"\nOpenAI endpoint, stopped server (defaults): reported after {seconds:.1f} s: {message}")


def test_a_silent_openai_endpoint_is_reported_after_the_health_timeout():
    import socket

    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        config = GeneratorConfig(backend="openai", model="m", base_url=url, health_timeout_s=0.5, max_retries=1, progress=False)
        with pytest.raises(DependencyUnavailable, match=f"OpenAI-compatible endpoint at {url} is unreachable .*timed out"):
            build_generator(config).generate(["x"], sampling=GREEDY)


def test_openai_backend_constrained_letters(openai_server, tiny_model):
    letters = SamplingParams(temperature=1.0, allowed_letters=("B", "D"), seed=3)
    biased = build_generator(openai_config(openai_server, tokenizer=str(tiny_model)))
    out = biased.generate(PROMPTS, n=4, sampling=letters)
    assert {letter for samples in out for letter in samples} <= {"B", "D"}
    body = openai_server.requests[0]["body"]
    assert body["max_tokens"] == 1 and len(body["logit_bias"]) >= 2 and set(body["logit_bias"].values()) == {100}
    # Without a tokenizer no bias is sent; the free one-token replies are still validated.
    unbiased = build_generator(openai_config(openai_server)).generate(PROMPTS, n=4, sampling=letters)
    assert {letter for samples in unbiased for letter in samples} <= {"B", "D", ""}
    assert "logit_bias" not in openai_server.requests[-1]["body"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [("B", "B"), (" D", "D"), ("B.", "B"), ("(D)", "D"), ("**B**", "B"), ("Based", ""), ("C", ""), ("", ""), ("d", "")],
)
def test_validate_letter(reply, expected):
    assert validate_letter(reply, ("B", "D")) == expected


def test_openai_backend_needs_a_base_url():
    with pytest.raises(ValueError, match="base_url"):
        build_generator(GeneratorConfig(backend="openai", model="m"))


def test_resolve_model_downloads_an_s3_model_once(tiny_model, tmp_path, monkeypatch, s3_endpoint):
    from medssr import storage

    monkeypatch.setenv("MEDSSR_CACHE", str(tmp_path / "cache"))
    bucket = s3_endpoint.create_bucket("resolve-model")
    storage.upload_dir(tiny_model, f"s3://{bucket}/models/tiny")
    local = Path(resolve_model(f"s3://{bucket}/models/tiny"))
    assert local.is_relative_to(tmp_path / "cache") and (local / "model.safetensors").is_file()
    (local / "model.safetensors").write_bytes(b"kept")  # a second resolve must not download again
    assert resolve_model(f"s3://{bucket}/models/tiny/") == str(local)
    assert (local / "model.safetensors").read_bytes() == b"kept"
    with pytest.raises(storage.StorageError, match="nothing stored under"):
        resolve_model(f"s3://{bucket}/models/missing")


def test_build_once_leaves_nothing_half_built_and_builds_once(tmp_path):
    from medssr.models import COMPLETE_MARKER, build_once

    target = tmp_path / "models" / "m"
    calls = []

    def crash(folder):
        (folder / "weights.bin").write_text("partial")
        raise RuntimeError("killed mid-build")

    def build(folder):
        calls.append(folder)
        (folder / "weights.bin").write_text("full")

    with pytest.raises(RuntimeError, match="mid-build"):
        build_once(target, crash)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == [".m.lock"]
    assert build_once(target, build) == target and build_once(target, build) == target
    assert len(calls) == 1 and (target / "weights.bin").read_text() == "full" and (target / COMPLETE_MARKER).is_file()


def _greedy_reference(generator, prompt, max_tokens, eos_ids):
    """Greedy completion ids by full forward passes (no cache), and whether an end token stopped it."""
    import torch

    ids = generator._encode(prompt)
    new = []
    with torch.inference_mode():
        for _ in range(max_tokens):
            token = int(generator.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token in eos_ids:
                return new, True
            new.append(token)
    return new, False


def test_rows_admitted_into_a_running_batch_match_one_at_a_time(tiny_model):
    """With more prompts than rows, a waiting prompt takes the slot of a finished row mid-decode (its
    cache joined, left-padded, to the running batch); completions equal one-prompt-at-a-time decoding."""
    import torch

    small = build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=4, progress=False))
    alone = build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=1, progress=False))
    with torch.inference_mode():
        first = int(small.model(input_ids=torch.tensor([small._encode(PROMPTS[2])])).logits[0, -1].argmax())
    small.eos_token_ids = alone.eos_token_ids = small.eos_token_ids + [first]
    rows_per_forward = _record_passes(small)
    joined = small.generate(PROMPTS, sampling=GREEDY)
    assert joined == alone.generate(PROMPTS, sampling=GREEDY)
    assert joined[2] == [small.tokenizer.decode([first])]  # its first token ended it
    # Four prompts prefilled (shortest first); the shortest ends on its first token, so three rows
    # decode; then the fifth prompt is prefilled and decodes beside those three.
    lengths = sorted(len(small._encode(p)) for p in PROMPTS)
    assert rows_per_forward[:7] == [(1, length) for length in lengths[:4]] + [(3, 1), (1, lengths[4]), (4, 1)]


@pytest.mark.parametrize("style", ["chat", "text"])
@pytest.mark.parametrize("max_tokens", [3, 40])  # every row cut off by max_tokens; rows ending on an end token
def test_follow_up_continues_the_finished_rows_cache(tiny_model, style, max_tokens):
    """The follow-up letter read on a finished row's own cache equals the greedy letter of a full
    forward pass over prompt + completion + follow-up turn; rows not picked get None."""
    import torch

    from medssr.generation.follow_up import FollowUp
    from medssr.generation.transformers_backend import letter_token_ids

    generator = build_generator(GeneratorConfig(model=str(tiny_model), dtype="float32", batch_size=3, progress=False))
    prompts = [p for p in PROMPTS if isinstance(p, str) == (style == "text")]
    if style == "chat":
        prompts = prompts + [[{"role": "user", "content": "Name the most likely diagnosis for this child."}]]
    with torch.inference_mode():  # make some rows end on an end token after a few tokens
        third = [int(generator.model(input_ids=torch.tensor([generator._encode(p)])).logits[0, -1].argmax()) for p in prompts]
    generator.eos_token_ids = generator.eos_token_ids + third[:1]
    letters = [("A", "B", "C", "D"), ("A", "B", "C"), ("A", "B", "C", "D", "E")]
    instruction = "Respond with one option only. The answer is"
    follow_up = FollowUp(instruction, letters, needed=lambda p, s, text: p != 1)
    sampling = SamplingParams(temperature=0, max_tokens=max_tokens)
    completions, replies = generator.generate_with_follow_up(prompts, n=2, sampling=sampling, follow_up=follow_up)
    assert completions == generator.generate(prompts, n=2, sampling=sampling)
    for p, prompt in enumerate(prompts):
        if p == 1:
            assert replies[p] == [None, None]
            continue
        new, by_eos = _greedy_reference(generator, prompt, max_tokens, generator.eos_token_ids)
        ids = generator._encode(prompt) + new + generator._follow_up_suffix(prompt, instruction)
        with torch.inference_mode():
            logits = generator.model(input_ids=torch.tensor([ids])).logits[0, -1]
        by_id = letter_token_ids(generator.tokenizer, letters[p])
        expected = by_id[max(by_id, key=lambda token: float(logits[token]))]
        assert replies[p] == [expected, expected], (p, by_eos)


def test_follow_up_suffix_closes_the_turn_like_the_chat_template(generator):
    instruction = "Respond with one option only. The answer is"
    suffix = generator.tokenizer.decode(generator._follow_up_suffix(CHAT, instruction))
    assert suffix == f"<|im_end|>\n<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    assert generator.tokenizer.decode(generator._follow_up_suffix("Question?", instruction)) == f"\n{instruction}"


def test_generic_follow_up_asks_the_continued_conversation(openai_server, tiny_model):
    """Backends without their own follow-up (here the OpenAI-compatible one) get a second call with the
    conversation continued: prompt, completion, instruction."""
    from medssr.generation.follow_up import FollowUp, continuation, generate_with_follow_up

    remote = build_generator(openai_config(openai_server, tokenizer=str(tiny_model)))
    follow_up = FollowUp("The answer is", [("A", "B"), ("A", "B", "C")], needed=lambda p, s, text: p == 0)
    completions, replies = generate_with_follow_up(remote, [CHAT, "Question?"], 2, GREEDY, follow_up)
    assert replies[1] == [None, None] and set(replies[0]) <= {"A", "B"} and None not in replies[0]
    asked = [request["body"] for request in openai_server.requests[2:]]
    assert [body["messages"][-2:] for body in asked] == [
        [{"role": "assistant", "content": completions[0][s]}, {"role": "user", "content": "The answer is"}] for s in range(2)
    ]
    assert continuation(CHAT, "x", "go")[-2:] == [{"role": "assistant", "content": "x"}, {"role": "user", "content": "go"}]
    assert continuation("Q:", " x", "go") == "Q: x\ngo"


def test_prefix_shared_by_a_calls_prompts_is_computed_once(generator):
    """Chat prompts with one system prompt share their opening tokens: a call computes them once and
    each prompt's prefill covers only the rest; completions match one call per prompt."""
    system = {"role": "system", "content": "You are a medical expert. Answer with one option letter."}
    prompts = [[system, {"role": "user", "content": question}] for question in ("Which gene?", "Which enzyme is deficient here?")]
    encoded = [generator._encode(prompt) for prompt in prompts]
    shared = next(i for i, (a, b) in enumerate(zip(*encoded)) if a != b)
    shapes = []
    hook = generator.model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        together = generator.generate(prompts, sampling=GREEDY)
    finally:
        hook.remove()
    assert shapes[:3] == [(1, shared)] + sorted((1, len(ids) - shared) for ids in encoded)
    assert together == [generator.generate([prompt], sampling=GREEDY)[0] for prompt in prompts]


def test_sample_ids_on_a_model_in_memory_returns_ids_and_their_logprobs(tiny_model):
    """``on_model`` wraps the given module (no copy, mode untouched); ``sample_ids`` gives each prompt its own
    count of samples, with log-probs equal to a plain forward pass at the sampling temperature."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medssr.generation.transformers_backend import TransformersGenerator

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.train()
    generator = TransformersGenerator.on_model(model, AutoTokenizer.from_pretrained(tiny_model), batch_size=4)
    assert generator.model is model and model.training
    prompts = [generator._encode(PROMPTS[0]), generator._encode(CHAT)]
    model.eval()
    samples = generator.sample_ids(prompts, [3, 1], SamplingParams(temperature=0.5, top_k=0, top_p=1.0, max_tokens=6, seed=3))
    assert [len(group) for group in samples] == [3, 1]
    for ids, group in zip(prompts, samples):
        for sample in group:
            assert 1 <= len(sample.ids) == len(sample.logprobs) <= 6
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids + sample.ids])).logits[0, len(ids) - 1 : -1] / 0.5
            expected = logits.log_softmax(-1).gather(1, torch.tensor(sample.ids)[:, None]).squeeze(1)
            assert torch.allclose(torch.tensor(sample.logprobs), expected, atol=1e-4)
    with pytest.raises(ValueError, match="counts"):
        generator.sample_ids(prompts, [1], SamplingParams())


@pytest.mark.parametrize(
    ("top_k", "top_p", "expected"),
    [
        (0, 1.0, [0.0, 0.1, 0.0, 0.6, 0.3]),  # the whole distribution; zero-probability tokens never drawn
        (2, 1.0, [0.0, 0.0, 0.0, 2 / 3, 1 / 3]),  # the two most likely, renormalised
        (0, 0.7, [0.0, 0.0, 0.0, 2 / 3, 1 / 3]),  # mass before token 4 is 0.6 < 0.7: kept; before token 1: 0.9
    ],
)
def test_sampled_tokens_follow_the_configured_distribution(top_k, top_p, expected):
    import torch

    from medssr.generation.transformers_backend import sample_tokens

    probabilities = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3])
    logits = probabilities.log().repeat(100_000, 1)
    draws = sample_tokens(logits, SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p),
                          torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=5) / len(draws)
    assert torch.allclose(frequencies, torch.tensor(expected), atol=0.005), frequencies
