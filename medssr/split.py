"""Stage-2 data for a pipeline run, disjoint from what the run evaluates.

Stage 2 trains on human-annotated questions with gold answers. When none are given, one benchmark
file of ``benchmarks_dir`` is split by a seeded hash of each question id into a train part (stage-2
data and synthesis seeds) and an eval part; the evaluation folder of the run holds the eval part in
its place, so no evaluated question is ever trained on. When stage-2 data is given, every benchmark
question sharing an id or a normalised stem with it is removed from the evaluation folder instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from medssr import locations
from medssr.data import MCQItem, read_jsonl, read_reference_benchmark, write_jsonl
from medssr.errors import UserError

BENCHMARK_PREFIX = "test_short_"


@dataclass
class SplitConfig:
    benchmarks_dir: str = field(metadata={"help": "folder of benchmark files in the reference format"})
    split_benchmark: str = field(default="medqa", metadata={"help": "benchmark split into stage-2 train / eval parts"})
    train_size: int = field(default=200, metadata={"help": "questions of split_benchmark moved to the train part"})
    eval_size: int = field(default=0, metadata={"help": "held-out questions of split_benchmark kept for evaluation (the first ones of its eval part); 0: all"})
    stage2_data: str = field(default="", metadata={"help": "given stage-2 JSONL (MCQItem with answers); replaces the split"})
    seed: int = field(default=0, metadata={"help": "seed of the id hash that orders questions for the split"})


@dataclass
class SplitResult:
    train_path: Path
    eval_dir: Path
    counts: dict


def _order_key(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()


def _normalised(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def benchmark_file(benchmarks_dir: str | os.PathLike, name: str) -> Path:
    path = Path(benchmarks_dir) / f"{BENCHMARK_PREFIX}{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark file {path} (split_benchmark={name!r})")
    return path


def split_stage2_data(config: SplitConfig, out_dir: str | os.PathLike) -> SplitResult:
    """Write ``out_dir/stage2.jsonl`` and ``out_dir/benchmarks/`` (the evaluation folder of the run)."""
    if not config.benchmarks_dir:
        raise UserError(f"split.benchmarks_dir: {locations.missing(locations.BENCHMARKS)}")
    source = Path(config.benchmarks_dir)
    if not source.is_dir():
        raise UserError(f"split.benchmarks_dir: no such folder {source} (the folder of {locations.BENCHMARKS.what})")
    out_dir = Path(out_dir)
    eval_dir = out_dir / "benchmarks"
    if eval_dir.exists():
        shutil.rmtree(eval_dir)
    eval_dir.mkdir(parents=True)
    counts: dict = {}
    if config.stage2_data:
        train = read_jsonl(config.stage2_data, MCQItem).records
        missing = [item.id for item in train if item.answer is None]
        if missing:
            raise ValueError(f"stage2_data: {len(missing)} items have no gold answer (first: {missing[0]})")
        train_ids = {item.id for item in train}
        train_stems = {_normalised(item.stem) for item in train}
        for path in sorted(source.glob(f"{BENCHMARK_PREFIX}*.json")):
            rows = json.loads(path.read_text(encoding="utf-8"))
            items = read_reference_benchmark(path, on_error="skip").records
            overlapping = {i.id for i in items if i.id in train_ids or _normalised(i.stem) in train_stems}
            kept = [row for row in rows if str(row.get("id")) not in overlapping]
            (eval_dir / path.name).write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")
            counts[f"removed_from_eval.{path.stem.removeprefix(BENCHMARK_PREFIX)}"] = len(rows) - len(kept)
    else:
        split_path = benchmark_file(source, config.split_benchmark)
        items = read_reference_benchmark(split_path, on_error="skip").records
        if config.train_size >= len(items):
            raise ValueError(f"train_size: {config.train_size} leaves no eval questions of {len(items)} in {split_path.name}")
        ordered = sorted(items, key=lambda item: _order_key(config.seed, item.id))
        train = ordered[: config.train_size]
        train_ids = {item.id for item in train}
        rows = json.loads(split_path.read_text(encoding="utf-8"))
        eval_rows = [row for row in rows if str(row.get("id")) not in train_ids]
        counts[f"removed_from_eval.{config.split_benchmark}"] = len(rows) - len(eval_rows)
        if config.eval_size:
            if len(eval_rows) < config.eval_size:
                raise ValueError(f"eval_size: {split_path.name} has {len(eval_rows)} held-out questions, fewer than {config.eval_size}")
            eval_rows = eval_rows[: config.eval_size]
        for path in sorted(source.glob(f"{BENCHMARK_PREFIX}*.json")):
            if path == split_path:
                (eval_dir / path.name).write_text(json.dumps(eval_rows, ensure_ascii=False), encoding="utf-8")
            else:
                shutil.copyfile(path, eval_dir / path.name)
        counts[f"eval_questions.{config.split_benchmark}"] = len(eval_rows)
    train_path = out_dir / "stage2.jsonl"
    counts["stage2_items"] = write_jsonl(train_path, train)
    if not train:
        raise ValueError(
            "prepare: stage 2 (train-supervised) has 0 human-annotated questions to train on: "
            + ("stage2_data holds none" if config.stage2_data else "raise split.train_size (0 questions moved from the split benchmark)")
        )
    return SplitResult(train_path, eval_dir, counts)
