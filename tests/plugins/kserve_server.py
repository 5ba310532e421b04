"""A running KServe model server with the project's predictor, for serving tests.

Fixtures:
- `answering_model` (session): a tiny model (head size 32, which vLLM's CPU attention also runs), briefly
  trained so that, decoding greedily, it answers any chat question with "The answer is C." (gives the
  answer-letter path a known outcome).
- `kserve_server` (module): `medssr serve` on a free 127.0.0.1 port serving `answering_model` as
  "medssr-tiny" with small limits (batch 8, queue 32, 256 prompt tokens, n <= 4) on the transformers
  engine; waits for /v2/health/ready and stops the process when the module's tests are done. A test module
  that sets `ENGINE = "vllm"` gets it on vLLM's engine instead (the same tests, imported there, run on both).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SERVED_NAME = "medssr-tiny"
ANSWER_TEXT = "The answer is C."


def train_to_answer(model_dir: Path, answer: str = ANSWER_TEXT, steps: int = 60) -> None:
    """Fit the tiny model to reply ``answer`` after any chat prompt (loss on the reply only)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medssr.prompts import SYSTEM_PROMPT

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    questions = [
        "A patient presents with seizures and ataxia. Which gene?\nA. SCN1A\nB. MECP2\nC. ATXN1\nD. FMR1",
        "Which mode of inheritance?\nA. autosomal dominant\nB. X-linked\nC. mitochondrial",
        "What is the diagnosis?",
        "hello",
    ]
    rows = []
    for index, question in enumerate(questions):
        for system in (None, SYSTEM_PROMPT, "Answer with one letter."):
            messages = [{"role": "user", "content": question}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
            reply_ids = tokenizer.encode(answer + "<|im_end|>", add_special_tokens=False)
            rows.append((prompt_ids + reply_ids, [-100] * len(prompt_ids) + reply_ids))
    # One right-padded batch of every row; padding is masked out of attention and loss.
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    attention_mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread synchronisation
    try:
        for _ in range(steps):
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(model_dir, safe_serialization=True)


@pytest.fixture(scope="session")
def answering_model(tmp_path_factory) -> Path:
    from medssr.models import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("answering-model") / "model", attention_heads=2)
    train_to_answer(folder)
    return folder


@pytest.fixture(scope="module")
def kserve_server(answering_model, tmp_path_factory, request):
    from medssr.serving.config import ServeConfig
    from medssr.serving.process import ServerProcess, free_port

    engine = getattr(request.module, "ENGINE", "transformers")
    config = ServeConfig(
        engine=engine,
        dtype="float32",  # vLLM's "auto" would decode a float32 checkpoint in bf16 on CPU
        max_model_len=512,
        model=str(answering_model),
        name=SERVED_NAME,
        host="127.0.0.1",
        port=free_port(),
        max_batch_size=8,
        max_wait_ms=10,
        max_queue=32,
        max_prompt_tokens=256,
        max_tokens_limit=256,
        default_max_tokens=16,
        max_n=4,
        torch_threads=1,
    )
    server = ServerProcess(config, tmp_path_factory.mktemp("kserve-server") / "server.log")
    server.start(timeout_s=300 if engine == "vllm" else 120)  # vLLM's engine starts in about a minute here
    yield server
    server.stop()
