"""The in-distribution set (raredis_seen): new questions about the conditions stage 1 trained on."""

from __future__ import annotations

from medssr.data import MCQItem, read_reference_benchmark, write_reference_benchmark
from medssr.study.probe import probe_items
from medssr.synthesis.config import QUESTION_TYPES, SynthesisConfig
from medssr.synthesis.seen import build_seen_items


def trained_items() -> list[MCQItem]:
    items = [item for kind in QUESTION_TYPES for item in probe_items(kind, 3, 5, seed=7)]
    seed_based = MCQItem(id="seed-1", stem="A seed question?", options={"A": "x", "B": "y"}, answer="A", source="medqa",
                         metadata={"origin": "seed"})
    return [*items, seed_based]


def test_each_knowledge_question_gets_new_ones_about_its_condition_type_and_difficulty(tmp_path):
    trained = trained_items()
    config = SynthesisConfig(n=1, seed_questions="unused.jsonl", options_per_item=5)
    seen, missing = build_seen_items(trained, 2, config, seed=0)
    knowledge = [item for item in trained if item.metadata.get("origin") == "knowledge"]
    assert len(seen) + missing == 2 * len(knowledge) and len(seen) >= len(knowledge)
    by_id = {item.id: item for item in trained}
    assert {by_id[item.metadata["trained_item"]].metadata["origin"] for item in seen} == {"knowledge"}
    taken = {(t.stem, frozenset(t.options.values())) for t in trained}
    for item in seen:
        source = by_id[item.metadata["trained_item"]]
        assert item.metadata["disease_ids"][0] == source.metadata["disease_ids"][0]
        assert (item.metadata["question_type"], item.metadata["difficulty"]) == (source.metadata["question_type"], source.metadata["difficulty"])
        assert (item.stem, frozenset(item.options.values())) not in taken, "a new question repeats a training one"
        taken.add((item.stem, frozenset(item.options.values())))
        assert item.answer in item.options and item.source == "raredis_seen"
    assert {item.metadata["question_type"] for item in seen} == set(QUESTION_TYPES)
    again, _ = build_seen_items(trained, 2, config, seed=0)
    other, _ = build_seen_items(trained, 2, config, seed=1)
    assert again == seen and other != seen

    # the reference format round-trips what the harness reads
    path = tmp_path / "test_short_raredis_seen.json"
    assert write_reference_benchmark(path, seen) == len(seen)
    read = read_reference_benchmark(path).records
    assert [(r.id, r.stem, r.options, r.answer, r.source) for r in read] == [(s.id, s.stem, s.options, s.answer, s.source) for s in seen]
    assert read[0].metadata["question_type"] == seen[0].metadata["question_type"]
