"""A completions cache that can never serve stale answers.

A run's key is a hash of everything that shapes a completion: the model's identity (its resolved
folder and, for every file in it, name, size and modification time, plus the content of the small
config/tokenizer files), the backend settings that change outputs, the sampling settings and ``n``.
Inside a run, each question is keyed by a hash of the exact prompt the model sees (system prompt,
stem, options, prompt style), so a changed question, prompt or setting is a miss, while a larger
``--limit`` reuses what is there. Records are appended after every chunk, so an interrupted run
resumes where it stopped. Labelling and evaluation both use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

from medssr.generation.base import GeneratorConfig, Prompt, SamplingParams
from medssr.generation.follow_up import FollowUp, generate_with_follow_up

SMALL_FILE_BYTES = 4 << 20  # config, tokenizer and template files are hashed by content
_OUTPUT_SHAPING = ("backend", "dtype", "trust_remote_code", "base_url")
"""GeneratorConfig fields that can change what is generated (batch size and device only change speed)."""


def digest(data: Any) -> str:
    """A stable sha256 of JSON-able data (or of a string as is)."""
    text = data if isinstance(data, str) else json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _file_digest(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def folder_fingerprint(folder: Path) -> dict:
    """Every file of a model folder: large weight files by size and mtime, small files by content."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        if relative.startswith(".") or "/." in relative:
            continue
        stat = path.stat()
        entry: dict[str, Any] = {"size": stat.st_size}
        if stat.st_size <= SMALL_FILE_BYTES:
            entry["sha256"] = _file_digest(path)
        else:
            entry["mtime_ns"] = stat.st_mtime_ns
        files[relative] = entry
    return files


def model_identity(config: GeneratorConfig) -> dict:
    """What identifies the model behind a generator config, for cache keys and reports.

    Local folders (and ``s3://`` models, via their downloaded copy) are fingerprinted file by file; a
    hub id is resolved to its locally cached snapshot when there is one (the commit is in that path);
    an OpenAI-compatible endpoint can only be named (URL + served model name).
    """
    identity: dict[str, Any] = {"ref": config.model, "backend": config.backend}
    if config.backend == "openai":
        identity["base_url"] = config.base_url
        return identity
    from medssr.models import resolve_model

    resolved = resolve_model(config.model)
    folder = Path(resolved)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(resolved, local_files_only=True))
        except Exception:  # not in the local hub cache: the name is all there is
            identity["resolved"] = resolved
            return identity
    identity["resolved"] = str(folder.resolve())
    identity["files"] = folder_fingerprint(folder)
    return identity


def run_key(identity: dict, generator: GeneratorConfig, sampling: SamplingParams, n: int, purpose: str) -> dict:
    """The settings that decide a run's completions (hashed into its cache folder name). ``dtype: auto`` on a CPU
    is the dtype it resolves to there, so a cache copied to a machine that resolves it otherwise is not reused."""
    shaping = {name: getattr(generator, name) for name in _OUTPUT_SHAPING}
    if generator.backend == "transformers" and generator.dtype == "auto":
        from medssr.generation.transformers_backend import resolve_device, resolve_dtype

        resolved = resolve_dtype("auto", resolve_device(generator.device))
        shaping["dtype"] = resolved if isinstance(resolved, str) else str(resolved).removeprefix("torch.")
    return {
        "purpose": purpose,
        "model": identity,
        "generator": shaping,
        "sampling": asdict(sampling),
        "n": n,
    }


def default_cache_root() -> Path:
    """``$MEDSSR_CACHE/completions`` (default ``~/.cache/medssr/completions``)."""
    from medssr.models import cache_dir

    return cache_dir() / "completions"


def prompt_key(prompt: Prompt) -> str:
    return digest(prompt)


def keyed_prompts(prompts) -> tuple[dict[str, Prompt], list[str]]:
    """The distinct prompts by cache key, and the key of each given prompt, in order."""
    by_key: dict[str, Prompt] = {}
    keys = []
    for prompt in prompts:
        key = prompt_key(prompt)
        by_key[key] = prompt
        keys.append(key)
    return by_key, keys


class CompletionCache:
    """Completions (and second-pass recoveries) per prompt for one run key, in an append-only JSONL."""

    def __init__(self, root: str | os.PathLike, key: dict):
        self.key = key
        self.key_digest = digest(key)
        self.folder = Path(root).expanduser() / self.key_digest[:24]
        self.folder.mkdir(parents=True, exist_ok=True)
        settings = self.folder / "settings.json"
        if not settings.exists():
            tmp = settings.with_suffix(".tmp")
            tmp.write_text(json.dumps(key, indent=2, sort_keys=True, default=str), encoding="utf-8")
            os.replace(tmp, settings)
        self.path = self.folder / "completions.jsonl"
        self.completions: dict[str, list[str]] = {}
        self.recovered: dict[str, dict[int, str]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interrupted run: it is simply regenerated
                if "completions" in record:
                    self.completions[record["prompt"]] = record["completions"]
                elif "recovered" in record:
                    self.recovered.setdefault(record["prompt"], {})[int(record["sample"])] = record["recovered"]

    def _append(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if lines:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(lines)
                handle.flush()
                os.fsync(handle.fileno())

    def get(self, key: str) -> list[str] | None:
        return self.completions.get(key)

    def put_many(self, items: dict[str, list[str]]) -> None:
        self.completions.update(items)
        self._append({"prompt": key, "completions": value} for key, value in items.items())

    def get_recovered(self, key: str, sample: int) -> str | None:
        return self.recovered.get(key, {}).get(sample)

    def put_recovered(self, entries: list[tuple[str, int, str]]) -> None:
        for key, sample, letter in entries:
            self.recovered.setdefault(key, {})[sample] = letter
        self._append({"prompt": key, "sample": sample, "recovered": letter} for key, sample, letter in entries)

    def fill(
        self,
        generator,
        prompts: dict[str, Prompt],
        n: int,
        sampling: SamplingParams,
        chunk_size: int,
        desc: str = "generate",
        follow_up: Callable[[list[str]], FollowUp] | None = None,
    ) -> dict[str, list[str]]:
        """Completions for every prompt (key -> prompt): cached ones as stored, the rest generated in
        chunks of ``chunk_size`` prompts and saved after each chunk. ``follow_up(keys)``, if given, is the
        second turn for a chunk's prompts; its letters are stored as recoveries with the completions."""
        from tqdm.auto import tqdm

        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        missing = [key for key in prompts if key not in self.completions]
        chunks = [missing[i : i + chunk_size] for i in range(0, len(missing), chunk_size)]
        for keys in tqdm(chunks, desc=desc, unit="chunk", disable=not chunks):
            chunk_prompts = [prompts[key] for key in keys]
            if follow_up is None:
                outputs, replies = generator.generate(chunk_prompts, n=n, sampling=sampling), None
            else:
                outputs, replies = generate_with_follow_up(generator, chunk_prompts, n, sampling, follow_up(keys))
            if len(outputs) != len(keys) or any(len(completions) != n for completions in outputs):
                raise RuntimeError(f"generator returned {len(outputs)} results for {len(keys)} prompts (n={n})")
            self.put_many(dict(zip(keys, (list(map(str, c)) for c in outputs))))
            if replies is not None:
                self.put_recovered(
                    [(key, s, letter) for key, letters in zip(keys, replies) for s, letter in enumerate(letters) if letter is not None]
                )
        return {key: self.completions[key] for key in prompts}
