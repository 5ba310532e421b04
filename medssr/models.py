"""Models that need no hub: a tiny random model for tests, SmolLM2-135M-Instruct for the demo."""

from __future__ import annotations

import os
from pathlib import Path

# ChatML, the format of Qwen2 and SmolLM2 chat models; `add_generation_prompt` opens the assistant turn.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _tiny_corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the words our prompts and answers use."""
    from medssr.prompts import SYSTEM_PROMPT

    letters = "ABCDEFGHIJ"
    lines = [SYSTEM_PROMPT]
    for index, letter in enumerate(letters):
        lines.append(f"The answer is {letter}. Answer: {letter} \\boxed{{{letter}}} **{letter}** ({letter})")
        lines.append(f"{letter}. option text number {index} with findings, gene, inheritance and onset")
    lines += [
        "A patient presents with seizures, ataxia, hypotonia and intellectual disability.",
        "Which diagnosis is most likely? Which gene is causal? What is the mode of inheritance?",
        "autosomal dominant autosomal recessive X-linked mitochondrial inheritance onset childhood adult",
        "Let's think step by step. The findings suggest a rare disease of the nervous system.",
    ]
    return lines * 4


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A random Qwen2 causal LM (hidden 64, 2 layers) and a byte-level BPE tokenizer trained here.

    Built in about a second; real enough for generation, GRPO and serving code paths in tests.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_core = Tokenizer(models.BPE())
    tokenizer_core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer_core.train_from_iterator(_tiny_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
    )
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out
