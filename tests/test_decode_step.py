"""The fused decode step computes the model's own next-token logits, follows weight updates and falls back
where it does not apply."""

from __future__ import annotations

import pytest

from medssr.generation import GeneratorConfig, SamplingParams, build_generator

PROMPTS = ["Which gene is mutated in cystic fibrosis?", "Answer:", "A child presents with ataxia and telangiectasia. The"]


def _random_model(kind: str):
    """A tiny random Llama, Qwen2 or Qwen3 (grouped-query attention; Qwen2 with q/k/v biases)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    torch.manual_seed(0)
    shape = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512)
    config = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[kind](**shape)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    if kind == "qwen2":  # random biases: zeros would not show a bias left out
        for layer in model.model.layers:
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(projection.bias, std=0.5)
    return model


def _prefilled(generator, prompts):
    """A left-padded running batch of ``prompts`` (token ids), as the generator builds it."""
    from medssr.generation.transformers_backend import _Running

    cache, mask, positions, logits = generator._prefill(prompts)
    made = generator._torch.zeros(len(prompts), dtype=generator._torch.long)
    return _Running(cache, mask, positions, logits, [(p, 0) for p in range(len(prompts))], made)


def _tokenizer():
    """A tokenizer for ids-only decoding (the model's vocabulary is never decoded here)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), eos_token="<unk>")


def _both_steps(model, precision: str, steps: int = 4, prompts=((5, 6, 7, 8, 9, 10), (11, 12), (13, 14, 15, 16))):
    """The logits of the fused step and of the forward pass over the same growing batch, step by step."""
    import torch

    from medssr.generation.transformers_backend import TransformersGenerator

    tokenizer = _tokenizer()
    if precision == "bf16 weights":
        model = model.to(torch.bfloat16)
    fused = TransformersGenerator.on_model(model, tokenizer, batch_size=4)
    plain = TransformersGenerator.on_model(model, tokenizer, batch_size=4, fused_decode=False)
    assert fused._fused_step is not None and plain._fused_step is None
    pairs = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        ours = _prefilled(fused, [list(p) for p in prompts])
        theirs = _prefilled(plain, [list(p) for p in prompts])  # in bf16 weights ours is the fused prefill
        assert fused._fused_step.computes(ours.cache)
        tokens = torch.tensor([20, 21, 22])
        for _ in range(steps):
            ours.feed(fused.step, tokens)
            theirs.feed(plain.step, tokens)
            pairs.append((ours.logits, theirs.logits))
            tokens = theirs.logits.argmax(-1)
    return pairs


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("precision", ["bf16 autocast", "bf16 weights"])
@pytest.mark.parametrize("padded", [True, False], ids=["left-padded rows", "rows without padding"])
def test_fused_step_gives_the_forward_pass_logits(kind, precision, padded):
    import torch

    prompts = ((5, 6, 7, 8, 9, 10), (11, 12), (13, 14, 15, 16)) if padded else ((5, 6, 7), (8, 9, 10), (11, 12, 13))
    for ours, theirs in _both_steps(_random_model(kind), precision, prompts=prompts):
        assert ours.dtype == theirs.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("prompts", [((5, 6, 7, 8, 9, 10), (11, 12), (13, 14, 15, 16)), ((7,),)],
                         ids=["three prompts in one pass", "a one-token prompt"])
def test_fused_prefill_gives_the_forward_pass_cache_and_logits(kind, prompts):
    """bf16 weights: every prompt of a call prefilled in one fused pass has the keys, values and last
    logits of the forward pass over that prompt alone, bit for bit."""
    import torch

    from medssr.generation.transformers_backend import TransformersGenerator

    model = _random_model(kind).to(torch.bfloat16)
    fused = TransformersGenerator.on_model(model, _tokenizer(), batch_size=4)
    plain = TransformersGenerator.on_model(model, _tokenizer(), batch_size=4, fused_decode=False)
    with torch.no_grad():
        assert fused._fused_step.prefills()
        ours, theirs = fused._prefill([list(p) for p in prompts]), plain._prefill([list(p) for p in prompts])
    for mine, reference in zip(ours[1:], theirs[1:]):  # mask, positions, logits
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)
    for mine, reference in zip(ours[0].layers, theirs[0].layers):
        assert mine.keys.dtype == reference.keys.dtype == torch.bfloat16
        torch.testing.assert_close(mine.keys, reference.keys, rtol=0, atol=0)
        torch.testing.assert_close(mine.values, reference.values, rtol=0, atol=0)


@pytest.mark.parametrize("precision", ["float32", "bf16 autocast"])
def test_prefill_under_autocast_and_in_float32_is_the_forward_pass(precision):
    """Under autocast the forward pass keeps some prefill activations in float32, and float32 is not the
    step's precision: there the fused step does not prefill, and the prefill is the forward pass's."""
    import torch

    from medssr.generation.transformers_backend import TransformersGenerator

    model = _random_model("llama")
    fused = TransformersGenerator.on_model(model, _tokenizer(), batch_size=2)
    plain = TransformersGenerator.on_model(model, _tokenizer(), batch_size=2, fused_decode=False)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        assert not fused._fused_step.prefills()
        ours, theirs = fused._prefill([[5, 6, 7], [8, 9]]), plain._prefill([[5, 6, 7], [8, 9]])
    torch.testing.assert_close(ours[3], theirs[3], rtol=0, atol=0)
    for mine, reference in zip(ours[0].layers, theirs[0].layers):
        assert mine.keys.dtype == reference.keys.dtype
        torch.testing.assert_close(mine.keys, reference.keys, rtol=0, atol=0)


def test_float32_decodes_through_the_forward_pass():
    """In float32 the fused step measured no faster: it does not run, and makes no weight copy."""
    import torch

    from medssr.generation.transformers_backend import TransformersGenerator

    model = _random_model("llama")
    generator = TransformersGenerator.on_model(model, _tokenizer(), batch_size=2)
    with torch.no_grad():
        running = _prefilled(generator, [[5, 6, 7], [8, 9]])
        assert not generator._fused_step.computes(running.cache)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert generator._fused_step.computes(running.cache)
    assert generator._fused_step._layers is None


def test_fused_step_follows_weights_changed_in_place():
    """An optimizer step writes the parameters in place: the next step computes with the new weights
    (autocast's bf16 copies of float32 weights, as a trainer's policy decodes)."""
    import torch

    model = _random_model("qwen2")
    before = _both_steps(model, "bf16 autocast", steps=1)[0]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.5)
    after = _both_steps(model, "bf16 autocast", steps=1)[0]
    torch.testing.assert_close(after[0], after[1], rtol=0, atol=0)
    assert not torch.allclose(before[0], after[0])


@pytest.mark.parametrize("precision", ["bf16 weights", "bf16 autocast"])
@pytest.mark.parametrize("batch_size", [4, 2], ids=["one batch", "rows joining mid-decode"])
def test_generation_with_the_fused_step_equals_the_forward_pass(tiny_model, precision, batch_size):
    """Greedy completions, sampled ids and their log-probabilities, with and without the fused step;
    with a batch smaller than the samples, rows join a batch whose cache the fused step holds in bf16."""
    import torch

    dtype = "bfloat16" if precision == "bf16 weights" else "float32"
    fused = build_generator(GeneratorConfig(model=str(tiny_model), batch_size=batch_size, progress=False, dtype=dtype))
    plain = build_generator(GeneratorConfig(model=str(tiny_model), batch_size=batch_size, progress=False, dtype=dtype, fused_decode=False))
    assert fused._fused_step is not None and plain._fused_step is None
    greedy = SamplingParams(temperature=0, max_tokens=12)
    sampling = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_tokens=12, seed=7)
    prompt_ids = [fused._encode(prompt) for prompt in PROMPTS]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
        assert fused.generate(PROMPTS, sampling=greedy) == plain.generate(PROMPTS, sampling=greedy)
        ours, theirs = fused.sample_ids(prompt_ids, [3, 2, 3], sampling), plain.sample_ids(prompt_ids, [3, 2, 3], sampling)
    assert [[s.ids for s in group] for group in ours] == [[s.ids for s in group] for group in theirs]
    for mine, reference in zip(ours, theirs):
        for a, b in zip(mine, reference):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), rtol=0, atol=0)


def test_fused_step_holds_the_cache_in_bf16_under_autocast():
    """Under autocast SDPA reads the cache in bf16: the step converts it once, not at every step, and a
    prefilled float32 batch joined to it is converted on the way in."""
    import torch

    from medssr.generation.transformers_backend import TransformersGenerator

    model = _random_model("llama")
    generator = TransformersGenerator.on_model(model, _tokenizer(), batch_size=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        running = _prefilled(generator, [[5, 6, 7], [8, 9]])
        assert running.cache.layers[0].keys.dtype == torch.float32
        running.feed(generator.step, torch.tensor([20, 21]))
        assert {layer.keys.dtype for layer in running.cache.layers} == {torch.bfloat16}
        running.extend(_prefilled(generator, [[10, 11, 12, 13]]))
        assert {layer.values.dtype for layer in running.cache.layers} == {torch.bfloat16}
        running.feed(generator.step, torch.tensor([20, 21, 22]))
        assert running.logits.shape[0] == 3 and torch.isfinite(running.logits).all()


def test_models_the_step_does_not_compute_use_the_forward_pass(tiny_model):
    """Another architecture, a projection that is not a plain Linear (an adapter) or eager attention:
    no fused step, and generation still works through the forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from medssr.generation.decode_step import FusedDecodeStep

    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=300))
    assert FusedDecodeStep.for_model(gpt2) is None
    adapted = _random_model("llama")

    class Adapted(torch.nn.Linear):
        """Stands for a LoRA layer: a Linear subclass whose forward adds more than its weight."""

    projection = adapted.model.layers[1].self_attn.v_proj
    adapted.model.layers[1].self_attn.v_proj = Adapted(projection.in_features, projection.out_features, bias=False)
    assert FusedDecodeStep.for_model(adapted) is None
    eager = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="eager")
    assert FusedDecodeStep.for_model(eager) is None
    generator = build_generator(GeneratorConfig(model=str(tiny_model), batch_size=2, progress=False))
    generator.model.config._attn_implementation = "eager"
    generator._attach(generator.model, generator.tokenizer, True)
    assert generator._fused_step is None
    assert len(generator.generate(PROMPTS[:1], sampling=SamplingParams(temperature=0, max_tokens=3))[0]) == 1


def test_follow_up_under_autocast_equals_the_forward_pass(tiny_model):
    """Evaluation in bf16 on CPU decodes under autocast and reads a follow-up letter on each finished row's
    cache (which the fused step holds in bf16): the same completions and letters as the forward pass."""
    import torch

    from medssr.generation.follow_up import FollowUp

    fused = build_generator(GeneratorConfig(model=str(tiny_model), batch_size=3, progress=False))
    plain = build_generator(GeneratorConfig(model=str(tiny_model), batch_size=3, progress=False, fused_decode=False))
    follow_up = FollowUp("The answer is", [("A", "B", "C", "D")] * len(PROMPTS), needed=lambda p, s, text: True)
    sampling = SamplingParams(temperature=0, max_tokens=10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = fused.generate_with_follow_up(PROMPTS, n=2, sampling=sampling, follow_up=follow_up)
        theirs = plain.generate_with_follow_up(PROMPTS, n=2, sampling=sampling, follow_up=follow_up)
    assert ours == theirs
    assert all(letter is not None for replies in ours[1] for letter in replies)


def test_fused_prefill_in_groups_of_tokens_equals_one_pass(monkeypatch):
    """Prompts beyond the tokens of one pass are prefilled in several passes, with the same result."""
    import torch

    from medssr.generation import transformers_backend
    from medssr.generation.transformers_backend import TransformersGenerator, _groups_of_tokens

    assert _groups_of_tokens([[1] * 3, [2] * 2, [3] * 6, [4]], 5) == [[[1] * 3, [2] * 2], [[3] * 6], [[4]]]
    generator = TransformersGenerator.on_model(_random_model("llama").to(torch.bfloat16), _tokenizer(), batch_size=4)
    prompts = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]
    with torch.no_grad():
        whole = generator._prefill(prompts)
        monkeypatch.setattr(transformers_backend, "PREFILL_TOKENS_PER_PASS", 4)
        grouped = generator._prefill(prompts)
    torch.testing.assert_close(grouped[3], whole[3], rtol=0, atol=0)
    for mine, reference in zip(grouped[0].layers, whole[0].layers):
        torch.testing.assert_close(mine.keys, reference.keys, rtol=0, atol=0)
        torch.testing.assert_close(mine.values, reference.values, rtol=0, atol=0)
