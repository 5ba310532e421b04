"""GRPO rollouts through medssr's generator (TRL rollout_func), checked against plain forward passes of the policy,
and the shared-prompt forward/backward, checked against TRL's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medssr.training.dataset import load_training_rows

DATA = Path(__file__).parent / "data"
SELF_DATA = DATA / "train_self.jsonl"
GROUP = 4
MAX_TOKENS = 12

pytestmark = pytest.mark.slow  # imports TRL


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_trainer(model_dir: Path, out: Path, **settings):
    """A GRPOTrainer on the tiny model with medssr's rollout, as run_training builds it."""
    from datasets import Dataset

    from medssr.training import TrainingConfig
    from medssr.training.grpo import build_grpo_config, build_reward_functions, load_tokenizer, rollout_function, trainer_class

    settings.setdefault("bf16", False)  # float32 unless a test asks for bf16 (left unset it follows the CPU: medssr.cpu)
    config = TrainingConfig(
        model=str(model_dir), data=str(SELF_DATA), output_dir=str(out), num_generations=GROUP,
        per_device_train_batch_size=GROUP * 2, max_completion_length=MAX_TOKENS, max_steps=1, **settings,
    )
    return trainer_class(config)(
        model=str(model_dir),
        reward_funcs=build_reward_functions(),
        args=build_grpo_config(config, out / "checkpoints"),
        train_dataset=Dataset.from_list(load_training_rows(SELF_DATA, "self").rows),
        processing_class=load_tokenizer(str(model_dir), False),
        rollout_func=rollout_function(config),
    )


def grouped_prompts(count: int) -> list:
    """What TRL hands a rollout: each prompt once per completion, a group's rows together."""
    rows = load_training_rows(SELF_DATA, "self").rows[:count]
    return [row["prompt"] for row in rows for _ in range(GROUP)]


def forward_logits(model, ids: list[int]):
    """Next-token logits at every position of one unpadded sequence: a plain forward pass, no cache."""
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def run_rollout(trainer, prompts):
    from medssr.training.rollout import generator_rollout

    return generator_rollout(prompts, trainer)


def test_logprobs_and_completions_agree_with_a_forward_pass(tiny_model, tmp_path, one_thread):
    import torch

    trainer = build_trainer(tiny_model, tmp_path, temperature=0.7, top_k=5, top_p=0.8)
    prompts = grouped_prompts(3)
    trainer.model.train()  # as during trainer.train()
    out = run_rollout(trainer, prompts)
    assert trainer.model.training, "the rollout puts the policy back into training mode"

    tokenizer, eos = trainer.processing_class, set(trainer.eos_token_ids)
    assert len(out["prompt_ids"]) == len(out["completion_ids"]) == len(out["logprobs"]) == len(prompts)
    for prompt, prompt_ids in zip(prompts, out["prompt_ids"]):
        assert prompt_ids == tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    for start in range(0, len(prompts), GROUP):
        group = [tuple(ids) for ids in out["completion_ids"][start : start + GROUP]]
        assert len(set(group)) > 1, "a group's completions are independent samples, not copies"

    model = trainer.model
    for prompt_ids, completion, logprobs in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
        assert 1 <= len(completion) <= MAX_TOKENS and len(logprobs) == len(completion)
        assert not eos & set(completion[:-1]), "nothing is sampled after an end token"
        assert completion[-1] in eos or len(completion) == MAX_TOKENS
        logits = forward_logits(model, prompt_ids + completion)[len(prompt_ids) - 1 : -1] / 0.7
        expected = logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(logprobs), expected, atol=1e-4), (logprobs, expected.tolist())
        # Each token lies in what temperature -> top-k 5 -> top-p 0.8 leaves of the forward pass's distribution.
        values, indices = logits.topk(5, dim=-1)
        probs = values.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        for position, token in enumerate(completion):
            rank = indices[position].tolist().index(token)  # ValueError: outside the top 5
            assert mass_before[position, rank] < 0.8 + 1e-4, "outside the top-p nucleus"


def test_bf16_on_cpu_is_autocast_over_float32_weights_and_the_rollout_samples_under_it(tiny_model, tmp_path, one_thread):
    """With bf16 on a CPU the policy keeps float32 weights (the optimizer's) and the rollout decodes under
    the trainer's own autocast, so its log-probabilities are the ones the trainer's bf16 forward gives."""
    import torch

    trainer = build_trainer(tiny_model, tmp_path, temperature=1.0, bf16=True)
    assert {parameter.dtype for parameter in trainer.model.parameters()} == {torch.float32}
    output_dtypes = []
    hook = trainer.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda module, args, output: output_dtypes.append(output.dtype))
    try:
        out = run_rollout(trainer, grouped_prompts(2))
    finally:
        hook.remove()
    assert set(output_dtypes) == {torch.bfloat16}, "the rollout's matmuls ran in bf16, as the trainer's do"
    for prompt_ids, completion, logprobs in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
        with trainer.accelerator.autocast():
            logits = forward_logits(trainer.model, prompt_ids + completion)[len(prompt_ids) - 1 : -1]
        expected = logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None]).squeeze(1)
        # bf16 rounds differently in a batched, cached decode than in one unbatched pass: not 1e-4.
        assert torch.allclose(torch.tensor(logprobs), expected, atol=2e-2), (logprobs, expected.tolist())


def test_groups_of_any_size_come_back_in_prompt_order(tiny_model, tmp_path, one_thread):
    """A process may get part of a group (its batch split across ranks): each row still gets a
    completion of its own prompt, in the order given."""
    import torch

    trainer = build_trainer(tiny_model, tmp_path, temperature=1.0)
    rows = load_training_rows(SELF_DATA, "self").rows
    prompts = [rows[0]["prompt"]] * 3 + [rows[1]["prompt"]] + [rows[0]["prompt"]] + [rows[2]["prompt"]] * 2
    out = run_rollout(trainer, prompts)
    assert len(out["completion_ids"]) == len(prompts)
    for prompt, prompt_ids, completion, logprobs in zip(prompts, out["prompt_ids"], out["completion_ids"], out["logprobs"]):
        assert prompt_ids == trainer._tokenize_prompts([prompt])[0][0]
        expected = forward_logits(trainer.model, prompt_ids + completion)[len(prompt_ids) - 1 : -1].log_softmax(-1)
        assert torch.allclose(torch.tensor(logprobs), expected.gather(1, torch.tensor(completion)[:, None]).squeeze(1), atol=1e-4)


def test_top_k_one_is_the_greedy_continuation_of_the_forward_pass(tiny_model, tmp_path, one_thread):
    trainer = build_trainer(tiny_model, tmp_path, temperature=1.0, top_k=1)
    out = run_rollout(trainer, grouped_prompts(2))
    eos = set(trainer.eos_token_ids)
    for prompt_ids, completion in zip(out["prompt_ids"], out["completion_ids"]):
        greedy: list[int] = []
        while len(greedy) < MAX_TOKENS and not (greedy and greedy[-1] in eos):
            greedy.append(int(forward_logits(trainer.model, prompt_ids + greedy)[-1].argmax()))
        assert completion == greedy


def test_the_rollout_samples_from_the_current_weights(tiny_model, tmp_path, one_thread):
    """No copy of the policy: a change to the trainer's weights shows in the very next rollout."""
    import torch

    trainer = build_trainer(tiny_model, tmp_path, temperature=1.0, top_k=1)
    prompts = grouped_prompts(1)
    before = run_rollout(trainer, prompts)
    with torch.no_grad():
        for parameter in trainer.model.model.layers[-1].mlp.parameters():
            parameter.mul_(-3.0)
    after = run_rollout(trainer, prompts)
    prompt_ids, completion = after["prompt_ids"][0], after["completion_ids"][0]
    expected = forward_logits(trainer.model, prompt_ids + completion)[len(prompt_ids) - 1 : -1].log_softmax(-1)
    expected = expected.gather(1, torch.tensor(completion)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(after["logprobs"][0]), expected, atol=1e-4)
    assert after["logprobs"][0] != before["logprobs"][0]


def test_sampling_settings_it_does_not_implement_are_refused(tiny_model, tmp_path, one_thread):
    trainer = build_trainer(tiny_model, tmp_path)
    trainer.args.repetition_penalty = 1.2
    with pytest.raises(ValueError, match="repetition_penalty"):
        run_rollout(trainer, grouped_prompts(1))


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_a_stage_trains_through_the_medssr_rollout(tiny_model, tmp_path, monkeypatch, one_thread, bf16):
    """run_training's default CPU rollout is ours: TRL's model.generate is never called, ours every step;
    in float32 and in bf16 autocast."""
    from transformers import GenerationMixin

    from medssr.data import LabeledItem, read_jsonl
    from medssr.models import teach_answer_format
    from medssr.training import TrainingConfig, run_training
    from medssr.training import rollout as rollout_module

    model = teach_answer_format(tiny_model, read_jsonl(SELF_DATA, LabeledItem, on_error="skip").records, tmp_path / "format", steps=40, rows_per_step=4)
    calls = []
    real = rollout_module.generator_rollout
    monkeypatch.setattr(rollout_module, "generator_rollout", lambda prompts, trainer: calls.append(len(prompts)) or real(prompts, trainer))
    monkeypatch.setattr(GenerationMixin, "generate", lambda *args, **kwargs: pytest.fail("TRL's model.generate was called"))

    out = tmp_path / "run"
    config = TrainingConfig(
        stage="self", model=str(model), data=str(SELF_DATA), output_dir=str(out), learning_rate=1e-3,
        num_generations=4, per_device_train_batch_size=4, max_completion_length=8, max_steps=3, save_steps=2, top_k=20, bf16=bf16,
    )
    result = run_training(config)
    assert calls == [4, 4, 4]
    assert result.metrics["rollout_backend"] == "medssr-generator"
    from safetensors.torch import load_file

    before, after = load_file(model / "model.safetensors"), load_file(out / "model.safetensors")
    assert any(not before[name].equal(after[name]) for name in before), "GRPO steps left every weight unchanged"
    history = [json.loads(line) for line in result.history_path.read_text().splitlines()]
    assert [h["step"] for h in history if "reward" in h] == [1, 2, 3]
    assert any(h["reward_std"] > 0 for h in history if "reward" in h), "no reward variance: nothing to learn from"


def test_shared_prompt_forward_gives_trls_logprobs_entropies_and_gradients(tiny_model, tmp_path, one_thread):
    """Each prompt computed once for its rows, without padding, against TRL's padded row-by-row forward:
    prompts of different lengths (so TRL left-pads), groups interleaved, completions of different lengths."""
    import torch
    from trl import GRPOTrainer

    from medssr.training.shared_prompt import SharedPromptGRPOTrainer

    trainer = build_trainer(tiny_model, tmp_path)
    assert isinstance(trainer, SharedPromptGRPOTrainer)
    rows = load_training_rows(SELF_DATA, "self").rows
    tokenizer, pad = trainer.processing_class, trainer.processing_class.pad_token_id
    short = tokenizer.apply_chat_template([{"role": "user", "content": "Which gene?"}], add_generation_prompt=True, tokenize=True,
                                          return_dict=True)["input_ids"]
    long = tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    assert len(long) > len(short) + 5
    generator = torch.Generator().manual_seed(0)

    def completion() -> list[int]:
        return torch.randint(5, 500, (int(torch.randint(2, 9, (1,), generator=generator)),), generator=generator).tolist()

    batch = [(long if row % 3 else short, completion()) for row in range(7)]
    width, length = max(len(p) for p, _ in batch), max(len(c) for _, c in batch)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p + c + [pad] * (length - len(c)) for p, c in batch])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + len(c)) + [0] * (length - len(c)) for p, c in batch])
    completion_mask = attention_mask[:, -length:]

    def scored(compute):
        trainer.model.zero_grad()
        logps, entropy, _ = compute(trainer, trainer.model, input_ids, attention_mask, length, compute_entropy=True)
        ((logps * completion_mask).sum() + 0.1 * (entropy * completion_mask).sum()).backward()
        grads = {name: parameter.grad.clone() for name, parameter in trainer.model.named_parameters()}
        return logps.detach() * completion_mask, entropy.detach() * completion_mask, grads

    trainer.model.train()
    shared = scored(SharedPromptGRPOTrainer._get_per_token_logps_and_entropies)
    reference = scored(GRPOTrainer._get_per_token_logps_and_entropies)
    assert torch.allclose(shared[0], reference[0], atol=1e-4)
    assert torch.allclose(shared[1], reference[1], atol=1e-4)
    for name, grad in reference[2].items():
        assert torch.allclose(shared[2][name], grad, atol=1e-4, rtol=1e-3), name
    assert any(grad.abs().sum() > 0 for grad in reference[2].values())


def test_shared_prompt_forward_is_skipped_where_it_does_not_apply(tiny_model, tmp_path, one_thread):
    from medssr.training.grpo import trainer_class
    from medssr.training import TrainingConfig
    from trl import GRPOTrainer

    assert trainer_class(TrainingConfig(shared_prompt_forward=False)) is GRPOTrainer
    trainer = build_trainer(tiny_model, tmp_path, gradient_checkpointing=True)
    assert not trainer._can_share_prompts(trainer.model, False, {})
    trainer = build_trainer(tiny_model, tmp_path)
    assert trainer._can_share_prompts(trainer.model, False, {"pixel_values": None})
    assert not trainer._can_share_prompts(trainer.model, True, {})
    assert not trainer._can_share_prompts(trainer.model, False, {"pixel_values": object()})
