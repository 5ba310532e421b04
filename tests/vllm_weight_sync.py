"""Run by tests/test_vllm_grpo.py in a process of its own (a colocated vLLM engine sets up torch.distributed and
thread settings in the process that starts it): trains two GRPO steps with use_vllm through medssr's own trainer
construction, and prints, as JSON, the engine's greedy answer to one prompt before training, after training (its
weights last synced before the second step's rollouts), and after one more sync, beside the trained model's own
greedy answer and log-probabilities.

    python -m tests.vllm_weight_sync MODEL DATA OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(model: str, data: str, out: str) -> None:
    import torch
    import vllm

    from medssr.training import grpo, vllm_colocate
    from medssr.training.config import TrainingConfig
    from medssr.training.dataset import load_training_rows

    config = TrainingConfig(stage="supervised", model=model, data=data, output_dir=out, use_vllm=True, vllm_kv_cache_gib=1,
                            max_steps=2, num_generations=4, per_device_train_batch_size=16, max_completion_length=8,
                            learning_rate=3e-3, bf16=False, save_steps=100)
    tokenizer = grpo.load_tokenizer(model, trust_remote_code=False)
    rows = load_training_rows(data, "supervised").rows
    trainer = grpo.build_trainer(config, model, tokenizer, rows, grpo.build_grpo_config(config, Path(out) / "checkpoints"))
    prompt = tokenizer.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
    greedy = vllm.SamplingParams(temperature=0.0, max_tokens=8, logprobs=0)

    def engine() -> dict:
        (output,) = trainer.vllm_generation.llm.generate([{"prompt_token_ids": prompt}], greedy, use_tqdm=False)[0].outputs
        return {"tokens": list(output.token_ids), "logprobs": [step[token].logprob for step, token in zip(output.logprobs, output.token_ids)]}

    def trained_model() -> dict:
        policy = trainer.model.eval()
        with torch.inference_mode():
            ids = policy.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0]
            tokens = ids[len(prompt):].tolist()
            scores = policy(ids[None]).logits[0, len(prompt) - 1:-1].float().log_softmax(-1)
        return {"tokens": tokens, "logprobs": [float(scores[i, t]) for i, t in enumerate(tokens)]}

    before = engine()
    trainer.train()
    stale = engine()
    trainer.vllm_generation.sync_weights()
    print(json.dumps({"before": before, "stale": stale, "synced": engine(), "trained": trained_model(),
                      "steps": trainer.state.global_step,
                      "reward_std": [h["reward_std"] for h in trainer.state.log_history if "reward_std" in h],
                      "engine": vllm_colocate.engine_settings(trainer)}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
