"""Duplicate removal (exact after normalisation, and near-duplicates by MinHash LSH on word n-grams) and
decontamination against benchmark files (any shared 13-gram, the test GPT-3 used)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from medssr.data import MCQItem
from medssr.errors import UserError

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def item_text(item: MCQItem) -> str:
    """What duplicates and contamination are judged on: the stem and the option texts."""
    return " ".join([item.stem, *item.options.values()])


class Deduplicator:
    """Remembers accepted items; ``check`` says whether a new one is an exact or a near duplicate."""

    def __init__(self, threshold: float = 0.8, shingle_size: int = 3, num_perm: int = 64, seed: int = 1):
        from datasketch import MinHash, MinHashLSH

        self._minhash = MinHash
        self.threshold = threshold
        self.shingle_size = shingle_size
        self.num_perm = num_perm
        self.seed = seed
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if threshold < 1.0 else None
        self._exact: set[str] = set()
        self._count = 0
        # a fixed set of permutations shared by every signature (datasketch derives them from the seed)
        self._template = MinHash(num_perm=num_perm, seed=seed, scheme="affine32")

    def _signature(self, tokens: list[str]):
        size = self.shingle_size
        shingles = {" ".join(tokens[i: i + size]) for i in range(max(1, len(tokens) - size + 1))}
        signature = self._minhash(
            num_perm=self.num_perm, seed=self.seed, permutations=self._template.permutations, scheme="affine32"
        )
        signature.update_batch([s.encode() for s in sorted(shingles)])
        return signature

    def check(self, item: MCQItem, add: bool = True) -> str | None:
        """'exact_duplicate', 'near_duplicate' or None (then remembered when ``add``)."""
        tokens = words(item_text(item))
        key = hashlib.sha1(" ".join(tokens).encode()).hexdigest()
        if key in self._exact:
            return "exact_duplicate"
        signature = None
        if self._lsh is not None:
            signature = self._signature(tokens)
            if self._lsh.query(signature):
                return "near_duplicate"
        if add:
            self._exact.add(key)
            if signature is not None:
                self._lsh.insert(str(self._count), signature)
            self._count += 1
        return None


def benchmark_files(paths: list[str]) -> list[Path]:
    """Benchmark files named directly or found in folders (*.json reference format, *.jsonl MCQItem)."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file())
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"decontaminate_against: no such file or folder: {path}")
    return found


def benchmark_texts(path: Path) -> list[str]:
    """Every question's raw text in a benchmark file, including records too malformed to parse as
    MCQItems (contamination does not need well-formed options)."""
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of questions")
    texts = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        if "question" in row:
            texts.append(str(row["question"]))
        elif "stem" in row:
            options = row.get("options") or {}
            texts.append(" ".join([str(row["stem"]), *map(str, options.values() if isinstance(options, dict) else options)]))
    return texts


class Decontaminator:
    """Flags text sharing any ``n``-gram of words with a benchmark question (stem + options); benchmark
    questions shorter than ``n`` words are matched whole."""

    def __init__(self, paths: list[str], n: int = 13):
        self.n = n
        self._grams: set[int] = set()
        self._short_lengths: set[int] = set()
        self.files: dict[str, int] = {}
        for path in benchmark_files(paths):
            texts = benchmark_texts(path)
            self.files[str(path)] = len(texts)
            for text in texts:
                tokens = words(text)
                if len(tokens) < n:
                    if tokens:
                        self._short_lengths.add(len(tokens))
                        self._grams.add(self._hash(tokens))
                    continue
                for i in range(len(tokens) - n + 1):
                    self._grams.add(self._hash(tokens[i: i + n]))

    @staticmethod
    def _hash(tokens: list[str]) -> int:
        return int.from_bytes(hashlib.blake2b(" ".join(tokens).encode(), digest_size=8).digest(), "big")

    def contaminated(self, item: MCQItem) -> bool:
        if not self._grams:
            return False
        tokens = words(item_text(item))
        for size in sorted(self._short_lengths | {self.n}):
            for i in range(len(tokens) - size + 1):
                if self._hash(tokens[i: i + size]) in self._grams:
                    return True
        return False


def rejection_reason(item: MCQItem, dedup: Deduplicator, decontaminator: Decontaminator | None) -> str | None:
    """Why a new item must not be kept: "contaminated" or the kind of duplicate. None: kept (and remembered)."""
    if decontaminator is not None and decontaminator.contaminated(item):
        return "contaminated"
    return dedup.check(item)
