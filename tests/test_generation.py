import pytest

from medssr.generation import GeneratorConfig, SamplingParams, build_generator
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
    return build_generator(GeneratorConfig(model=str(tiny_model), batch_size=4, progress=False))


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
    one_by_one = build_generator(GeneratorConfig(model=str(tiny_model), batch_size=1, progress=False))
    assert generator.generate(PROMPTS, sampling=GREEDY) == one_by_one.generate(PROMPTS, sampling=GREEDY)


def test_empty_prompt_list_and_bad_n(generator):
    assert generator.generate([], n=3) == []
    with pytest.raises(ValueError, match="n must be"):
        generator.generate(["x"], n=0)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend: unknown generation backend 'llamacpp'"):
        build_generator(GeneratorConfig(backend="llamacpp", model="x"))


def test_resolve_model_local_missing_and_hub_id(tiny_model, tmp_path):
    assert resolve_model(tiny_model) == str(tiny_model)
    with pytest.raises(FileNotFoundError, match="no model folder"):
        resolve_model(tmp_path / "missing")
    assert resolve_model("Qwen/Qwen3-8B-Base") == "Qwen/Qwen3-8B-Base"
