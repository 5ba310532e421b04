"""Synthesis: quotas, determinism, item validity, decontamination, rewrite gate, held-out split, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from medssr.data import MCQItem, parse_question_text, read_jsonl
from medssr.generation.base import SamplingParams
from medssr.knowledge.base import normalise_name
from medssr.synthesis import SynthesisConfig, run_synthesis
from medssr.synthesis.heldout import build_heldout_benchmark, is_heldout
from medssr.synthesis.quota import largest_remainder, plan_cells
from medssr.synthesis.rewrite import check_rewrite

DATA = Path(__file__).parent / "data"
SEEDS = DATA / "synth_seed_questions.jsonl"
BENCHMARK = DATA / "synth_benchmark.json"


def contains_words(haystack: str, needle: str) -> bool:
    return f" {normalise_name(needle)} " in f" {normalise_name(haystack)} "


def test_largest_remainder_is_exact():
    counts = largest_remainder(2000, {"a": 1, "b": 1, "c": 1})
    assert sum(counts.values()) == 2000 and max(counts.values()) - min(counts.values()) <= 1
    counts = largest_remainder(7, {"x": 0.5, "y": 0.3, "z": 0.2})
    assert counts == {"x": 4, "y": 2, "z": 1}
    assert largest_remainder(5, {"x": 1, "y": 0}) == {"x": 5}
    cells = plan_cells(300, {"c1": 2, "c2": 1}, {"t1": 1, "t2": 1}, {"easy": 1, "hard": 2}, seed=3)
    assert Counter(c.category for c in cells) == {"c1": 200, "c2": 100}
    assert Counter(c.question_type for c in cells) == {"t1": 150, "t2": 150}
    assert Counter(c.difficulty for c in cells) == {"easy": 100, "hard": 200}


def test_plan_repairs_unsupported_pairs_without_changing_counts():
    supports = {"c1": {"t1"}, "c2": {"t1", "t2"}}
    cells = plan_cells(40, {"c1": 1, "c2": 1}, {"t1": 1, "t2": 1}, {"easy": 1}, seed=0, supports=supports)
    assert all(c.question_type in supports[c.category] for c in cells)
    assert Counter(c.question_type for c in cells) == {"t1": 20, "t2": 20}


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "synth.jsonl"
    config = SynthesisConfig(n=2000, rare_ratio=0.98, seed=7, seed_questions=str(SEEDS))
    return run_synthesis(config, out)


@pytest.mark.slow
def test_n2000_meets_every_quota(big_run):
    stats = big_run.stats
    items = read_jsonl(big_run.path).records
    assert len(items) == 2000
    rare = sum(1 for i in items if i.metadata["rare"]) / len(items)
    assert abs(rare - 0.98) <= 0.01
    knowledge = [i for i in items if i.metadata["origin"] == "knowledge"]
    requested = stats["requested"]["category"]
    assert len(requested) >= 10
    achieved = Counter(i.metadata["category"] for i in knowledge)
    for category, share in requested.items():
        assert abs(achieved[category] / len(knowledge) - share) <= 0.02, category
    for dimension in ("question_type", "difficulty"):
        shares = Counter(i.metadata[dimension] for i in knowledge)
        for key, share in stats["requested"][dimension].items():
            assert abs(shares[key] / len(knowledge) - share) <= 0.02, (dimension, key)
    assert stats["achieved"]["rarity"]["rare"] == pytest.approx(rare)
    assert big_run.chart_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert big_run.stats_path.name == "synth.jsonl.stats.json"
    assert json.loads(big_run.stats_path.read_text())["n_written"] == 2000


@pytest.mark.slow
def test_items_are_well_formed_and_never_leak(big_run):
    items = read_jsonl(big_run.path).records
    assert len({i.id for i in items}) == len(items)
    for item in items:
        meta = item.metadata
        texts = [normalise_name(t) for t in item.options.values()]
        assert len(set(texts)) == len(texts), item.id
        assert item.answer in item.options and meta["kb_answer"] == item.answer
        if meta["origin"] != "knowledge":
            continue
        assert meta["question_type"] in ("diagnosis", "causal_gene", "inheritance", "not_expected", "distinguishing")
        assert meta["difficulty"] in ("easy", "medium", "hard") and meta["category"]
        assert len(item.options) == 5 and meta["disease_ids"] and meta["evidence"]["answer_disease"]
        key = item.options[item.answer]
        assert not contains_words(item.stem, key), (item.id, item.stem, key)
        evidence = meta["evidence"]
        if meta["question_type"] == "diagnosis":
            assert len(evidence["findings"]) >= 1 and all(f["id"].startswith("HP:") for f in evidence["findings"])
        if meta["question_type"] == "causal_gene":
            assert key == evidence["answer_gene"]
            assert not re.search(rf"\b{re.escape(key)}\b", item.stem, re.IGNORECASE)


@pytest.mark.slow
def test_heldout_diseases_never_reach_training(big_run):
    items = read_jsonl(big_run.path).records
    used = {d for i in items for d in i.metadata["disease_ids"]}
    assert len(used) > 500
    assert not [d for d in used if is_heldout(d)]
    heldout = build_heldout_benchmark(40, seed=1)
    assert len(heldout) == 40
    assert all(is_heldout(i.metadata["evidence"]["answer_disease"]) for i in heldout)
    assert not {i.metadata["evidence"]["answer_disease"] for i in heldout} & used
    again = build_heldout_benchmark(40, seed=1)
    assert [i.model_dump() for i in again] == [i.model_dump() for i in heldout]


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path):
    config = SynthesisConfig(n=120, rare_ratio=0.75, seed=11, seed_questions=str(SEEDS), options_per_item=4)
    first = run_synthesis(config, tmp_path / "a.jsonl")
    # another process with another string-hash seed: no set or dict order may leak into the output
    script = (
        "import sys; from medssr.synthesis import SynthesisConfig, run_synthesis; "
        f"run_synthesis(SynthesisConfig(n=120, rare_ratio=0.75, seed=11, seed_questions={str(SEEDS)!r}, "
        "options_per_item=4), sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "b.jsonl")], check=True, env=env, capture_output=True)
    assert first.path.read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    other = run_synthesis(SynthesisConfig(n=120, rare_ratio=0.75, seed=12, seed_questions=str(SEEDS), options_per_item=4),
                          tmp_path / "c.jsonl")
    assert other.path.read_bytes() != first.path.read_bytes()
    items = read_jsonl(first.path).records
    assert all(len(i.options) == 4 for i in items if i.metadata["origin"] == "knowledge")


def test_seed_items_keep_their_key_after_shuffling(tmp_path):
    originals = {i.id: i for i in read_jsonl(SEEDS).records}
    result = run_synthesis(SynthesisConfig(n=40, rare_ratio=0.0, seed=3, seed_questions=str(SEEDS)), tmp_path / "s.jsonl")
    items = read_jsonl(result.path).records
    assert len(items) == 40 and all(i.metadata["origin"] == "seed" and not i.metadata["rare"] for i in items)
    moved = 0
    for item in items:
        original = originals[item.metadata["evidence"]["seed_id"]]
        assert item.options[item.answer] == original.options[original.answer]
        assert sorted(item.options.values()) == sorted(original.options.values())
        moved += item.answer != original.answer
        assert item.metadata["seed_transform"] in ("shuffled", "kept_order")
    assert moved > 10


def test_planted_benchmark_question_is_decontaminated(tmp_path):
    # 45 seed items are needed and 46 seeds exist: only decontamination can keep the planted one out
    config = SynthesisConfig(n=90, rare_ratio=0.5, seed=5, seed_questions=str(SEEDS), decontaminate_against=[str(BENCHMARK)])
    result = run_synthesis(config, tmp_path / "d.jsonl")
    items = read_jsonl(result.path).records
    seed_ids = {i.metadata["evidence"]["seed_id"] for i in items if i.metadata["origin"] == "seed"}
    assert len(seed_ids) == 45 and "seed-planted" not in seed_ids
    assert result.stats["decontamination"]["contaminated"] == 1
    assert result.stats["decontamination"]["benchmark_questions"] == {str(BENCHMARK): 4}


def test_too_few_seed_questions_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="seed_questions: .* 46 usable questions"):
        run_synthesis(SynthesisConfig(n=100, rare_ratio=0.5, seed_questions=str(SEEDS)), tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="seed_questions: required"):
        SynthesisConfig(n=10, rare_ratio=0.5)


class ScriptedRewriter:
    """A real Generator: answers each prompt by transforming the question it was given."""

    def __init__(self, mode: str):
        self.mode = mode
        self.calls = 0

    def generate(self, prompts, n=1, sampling=SamplingParams()):
        self.calls += 1
        outputs = []
        for messages in prompts:
            question = messages[-1]["content"]
            stem, options = parse_question_text(question)
            if self.mode == "mangle":  # drops the last option and rewords another
                options = dict(list(options.items())[:-1])
                options["A"] = options["A"] + " (variant)"
            prose = f"In the clinic today: {stem}"
            if self.mode == "state_answer":
                prose += " The answer is A."
            lines = [prose] + [f"{k}. {v}" for k, v in options.items()]
            outputs.append(["\n".join(lines)] * n)
        return outputs


@pytest.mark.parametrize(
    "mode, outcome", [("mangle", "options_changed"), ("state_answer", "answer_stated"), ("faithful", "accepted")]
)
def test_rewrite_gate(tmp_path, mode, outcome):
    generator = ScriptedRewriter(mode)
    config = SynthesisConfig(n=12, rare_ratio=1.0, seed=2, rewrite=True, rewrite_batch_size=5)
    result = run_synthesis(config, tmp_path / "r.jsonl", generator=generator)
    assert generator.calls == 3  # 12 items in batches of 5
    assert result.stats["rewrite"] == {outcome: 12}
    items = read_jsonl(result.path).records
    for item in items:
        if outcome == "accepted":
            assert item.stem.startswith("In the clinic today: ") and item.metadata["rewrite"] == "accepted"
            assert item.metadata["template_stem"] in item.stem
        else:
            assert item.metadata["rewrite"] == "rejected" and not item.stem.startswith("In the clinic")
        assert item.answer == item.metadata["kb_answer"]


def test_rewrite_check_rejects_leaks_and_garbage():
    item = MCQItem(id="q", stem="A child has ataxia and telangiectasia of the conjunctiva. What is the diagnosis?",
                   options={"A": "Ataxia-telangiectasia", "B": "Friedreich ataxia"}, answer="A")
    good = "A young child shows an unsteady gait and conjunctival telangiectasia. Diagnosis?\nA. Ataxia-telangiectasia\nB. Friedreich ataxia"
    assert check_rewrite(good, item)[1] == "accepted"
    assert check_rewrite("zq zq zq", item)[1] == "unparseable"
    swapped = "A child has ataxia. Diagnosis?\nA. Friedreich ataxia\nB. Ataxia-telangiectasia"
    assert check_rewrite(swapped, item)[1] == "options_changed"
    named = "A child with FBN1 variants has ataxia and telangiectasia. Diagnosis?\nA. Ataxia-telangiectasia\nB. Friedreich ataxia"
    assert check_rewrite(named, item, forbidden=["FBN1"])[1] == "answer_stated"


@pytest.mark.slow
def test_tiny_model_garbage_is_rejected(tmp_path, tiny_model):
    from medssr.generation import GeneratorConfig, build_generator

    generator = build_generator(GeneratorConfig(model=str(tiny_model), device="cpu", batch_size=4))
    config = SynthesisConfig(
        n=6, rare_ratio=0.5, seed=1, seed_questions=str(SEEDS), rewrite=True, rewrite_batch_size=4,
        rewrite_sampling=SamplingParams(temperature=1.0, max_tokens=16),
    )
    result = run_synthesis(config, tmp_path / "t.jsonl", generator=generator)
    assert sum(result.stats["rewrite"].values()) == 3 and result.stats["rewrite"].get("accepted", 0) == 0
    assert sum(result.stats["paraphrase"].values()) == 3 and result.stats["paraphrase"].get("accepted", 0) == 0
    items = read_jsonl(result.path).records
    assert all(i.metadata.get("seed_transform") != "paraphrased" for i in items)


def test_config_from_yaml(tmp_path):
    """`medssr synthesize --config` reads a YAML of settings, a nested config written as a mapping too."""
    from medssr.cli import build_parser
    from medssr.configs import from_args
    from medssr.stages import STAGES

    stage = STAGES["synthesis"]

    def read(path):
        args = build_parser().parse_args(["synthesize", "--config", str(path), "--out", str(tmp_path / "unused.jsonl")])
        return from_args(stage.config, args, stage.prefixes, section=stage.name)

    path = tmp_path / "synth.yaml"
    path.write_text(
        "n: 30\nrare_ratio: 1.0\nseed: 4\noptions_per_item: 4\nquestion_types: {diagnosis: 1, inheritance: 1}\n"
        "category_weights: {nervous_system: 3, eye: 1}\nrewrite_sampling: {temperature: 0.2, max_tokens: 64}\n"
    )
    config = read(path)
    assert config.rewrite_sampling.max_tokens == 64 and config.category_weights == {"nervous_system": 3, "eye": 1}
    result = run_synthesis(config, tmp_path / "y.jsonl")
    items = read_jsonl(result.path).records
    assert Counter(i.metadata["category"] for i in items) == {"nervous_system": 22, "eye": 8}
    assert {i.metadata["question_type"] for i in items} == {"diagnosis", "inheritance"}
    path.write_text("n: 3\nrare_ratoi: 1\n")
    with pytest.raises(ValueError, match="rare_ratoi"):
        read(path)
    with pytest.raises(ValueError, match="category_weights: no training diseases in kidney"):
        run_synthesis(SynthesisConfig(n=5, rare_ratio=1.0, category_weights={"kidney": 1}), tmp_path / "z.jsonl")


def test_cli_synthesize(tmp_path, capsys):
    from medssr.cli import main

    out = tmp_path / "cli.jsonl"
    code = main(["synthesize", "--n", "20", "--rare-ratio", "0.5", "--seed", "1", "--out", str(out),
                 "--seed-questions", str(SEEDS), "--decontaminate", str(BENCHMARK)])
    assert code == 0
    assert "wrote 20 items" in capsys.readouterr().out
    assert out.with_name("cli.jsonl.stats.json").is_file() and out.with_name("cli.jsonl.stats.png").is_file()
    assert main(["synthesize", "--n", "20", "--rare-ratio", "0.5", "--out", str(out)]) == 2
    assert "seed_questions: required" in capsys.readouterr().err


class InterruptedRewriter(ScriptedRewriter):
    """Answers faithfully, but fails on its second call, as a run killed mid-way would."""

    def __init__(self, fail_on_call: int | None):
        super().__init__("faithful")
        self.fail_on_call = fail_on_call
        self.prompts_seen = 0

    def generate(self, prompts, n=1, sampling=SamplingParams()):
        if self.calls + 1 == self.fail_on_call:
            raise RuntimeError("interrupted")
        self.prompts_seen += len(prompts)
        return super().generate(prompts, n, sampling)


def test_interrupted_rewrite_resumes_from_its_journal(tmp_path):
    config = SynthesisConfig(n=10, rare_ratio=1.0, seed=6, rewrite=True, rewrite_batch_size=4)
    out = tmp_path / "resume.jsonl"
    with pytest.raises(RuntimeError, match="interrupted"):
        run_synthesis(config, out, generator=InterruptedRewriter(fail_on_call=2))
    assert out.with_name("resume.jsonl.rewrite-journal.jsonl").is_file() and not out.exists()
    resumed = InterruptedRewriter(fail_on_call=None)
    result = run_synthesis(config, out, generator=resumed)
    assert resumed.prompts_seen == 6  # the first batch of 4 came from the journal
    assert result.stats["rewrite"] == {"accepted": 10}
    assert not out.with_name("resume.jsonl.rewrite-journal.jsonl").exists()
    fresh = run_synthesis(config, tmp_path / "fresh.jsonl", generator=ScriptedRewriter("faithful"))
    assert fresh.path.read_bytes() == result.path.read_bytes()
