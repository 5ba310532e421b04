"""Pseudo-labelling: the vote filter, the audit, and the whole run through the transformers backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medssr.answers import majority_vote
from medssr.data import LabeledItem, MCQItem, read_jsonl, write_jsonl
from medssr.generation.base import GeneratorConfig, SamplingParams
from medssr.labeling import LabelingConfig, SelectionRule, run_labeling
from medssr.labeling.audit import Outcome, audit, kb_key, to_markdown

ANSWER_MIX = ["The answer is B."] * 3 + ["The answer is C."]
"""What the tiny answerer is trained to say: B three times as often as C, so votes disagree a little."""


def build_tiny_answerer(tiny_model: Path, base: Path) -> Path:
    """The tiny random model, briefly trained to end its turn with "The answer is B." (or, less often, C).

    Real generation with a known answer distribution, in a few seconds; built once per session.
    """
    out = base / "tiny-answerer"
    if (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = base / "tiny-answerer.tmp"
    shutil.copytree(tiny_model, tmp, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tmp)
    model = AutoModelForCausalLM.from_pretrained(tmp)
    torch.manual_seed(0)
    # Only the end of a chat prompt: RoPE attends by relative position, so this carries over to full prompts.
    head = tokenizer.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    rows = [head + tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id] for text in ANSWER_MIX]
    input_ids = torch.tensor(rows)
    labels = input_ids.clone()
    labels[:, : len(head)] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        model(input_ids=input_ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def tiny_answerer(tiny_model, tmp_path_factory) -> Path:
    return build_tiny_answerer(tiny_model, tmp_path_factory.getbasetemp())


def make_items(count: int) -> list[MCQItem]:
    """Questions with known keys A, B, C, D, ...; odd ones carry the key only in metadata (synthesis style)."""
    items = []
    for index in range(count):
        key = "ABCD"[index % 4]
        items.append(
            MCQItem(
                id=f"q{index}",
                stem=f"Question {index}: which finding fits the inheritance and onset?",
                options={"A": "gene", "B": "onset", "C": "childhood", "D": "adult"},
                answer=key if index % 2 == 0 else None,
                metadata={"kb_answer": key} if index % 2 else {},
            )
        )
    return items


RULE = SelectionRule(min_agreement=0.5, max_agreement=0.9, min_parsed=4)


@pytest.mark.parametrize(
    "answers, reason",
    [
        (["B"] * 5 + ["C"] * 3, None),
        (["B"] * 4 + ["C", "D", None, None], None),
        (["B"] * 8, "above_max_agreement"),
        (["B", "C"] * 4, "tie"),
        (["B", "C", "D", "A", "B", None, None, None], "below_min_agreement"),
        ([None] * 5 + ["B", "B", "B"], "too_few_parsed"),
        ([None] * 8, "too_few_parsed"),
    ],
)
def test_selection_rule(answers, reason):
    assert RULE.drop_reason(majority_vote(answers)) == reason


def test_selection_rule_boundaries_are_inclusive():
    rule = SelectionRule(min_agreement=0.625, max_agreement=0.75, min_parsed=1)
    assert rule.drop_reason(majority_vote(["A"] * 5 + ["B"] * 3)) is None  # 0.625
    assert rule.drop_reason(majority_vote(["A"] * 6 + ["B"] * 2)) is None  # 0.75
    assert rule.drop_reason(majority_vote(["A"] * 7 + ["B"])) == "above_max_agreement"


def test_selection_rule_rejects_bad_bounds():
    with pytest.raises(ValueError, match="agreement bounds"):
        SelectionRule(0.8, 0.5, 1)
    with pytest.raises(ValueError, match="min_parsed"):
        SelectionRule(0.5, 0.9, 0)
    with pytest.raises(ValueError, match="min_parsed"):
        LabelingConfig(data="x", out="y", n_samples=4, min_parsed=5)


def test_kb_key_reads_metadata_then_answer():
    options = {"A": "x", "B": "y"}
    assert kb_key(MCQItem(id="1", stem="s", options=options, metadata={"kb_answer": "b"})) == "B"
    assert kb_key(MCQItem(id="1", stem="s", options=options, answer="A")) == "A"
    assert kb_key(MCQItem(id="1", stem="s", options=options, answer="A", metadata={"kb_answer": "B"})) == "B"
    assert kb_key(MCQItem(id="1", stem="s", options=options)) is None


def test_audit_precision_per_bucket_and_yield():
    outcomes = [
        Outcome("a", "A", "A", 1.0, 8, False, "above_max_agreement"),
        Outcome("b", "A", "A", 0.75, 8, True, None),
        Outcome("c", "B", "A", 0.75, 8, True, None),
        Outcome("d", None, "C", 0.625, 8, True, None),  # no key: counts for yield, not precision
        Outcome("e", "D", "D", 0.55, 8, True, None),
        Outcome("f", "A", None, 0.5, 8, False, "tie"),
        Outcome("g", "A", "B", 0.4, 5, False, "below_min_agreement"),
    ]
    report = audit(outcomes, 0.5, 0.9)
    assert (report["items"], report["voted"], report["kept"]) == (7, 6, 4)
    assert report["yield"] == pytest.approx(4 / 7)
    assert report["dropped"] == {"above_max_agreement": 1, "tie": 1, "below_min_agreement": 1}
    assert report["keyed_items"] == 6
    assert report["precision_kept"] == {"n": 3, "correct": 2, "precision": pytest.approx(2 / 3)}
    assert report["precision_voted"] == {"n": 5, "correct": 3, "precision": pytest.approx(3 / 5)}
    buckets = {b["bucket"]: b for b in report["buckets"]}
    assert buckets["[0.70, 0.80)"]["n"] == 2 and buckets["[0.70, 0.80)"]["correct"] == 1
    assert buckets["= 1.00"]["precision"] == 1.0 and buckets["= 1.00"]["kept"] == 0
    assert buckets["[0.00, 0.50)"]["precision"] == 0.0
    assert buckets["[0.60, 0.70)"]["precision"] is None  # only an unkeyed item there
    assert "| kept | 3 | 2 | 66.7% |" in to_markdown(report)


@pytest.mark.slow
def test_run_labeling_end_to_end(tiny_answerer, tmp_path):
    items = make_items(12)
    data = tmp_path / "items.jsonl"
    write_jsonl(data, items)
    config = LabelingConfig(
        data=str(data),
        out=str(tmp_path / "labeled.jsonl"),
        generator=GeneratorConfig(model=str(tiny_answerer), batch_size=96),
        n_samples=8,
        sampling=SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=12, seed=0),
        min_agreement=0.5,
        max_agreement=0.9,
        min_parsed=4,
        cache_dir=str(tmp_path / "cache"),
    )
    result = run_labeling(config)

    report = result.audit
    assert report["items"] == 12
    assert report["kept"] + sum(report["dropped"].values()) == 12
    assert result.parse_rate > 0.5  # the answerer says "The answer is B/C" most of the time
    kept = read_jsonl(config.out, LabeledItem).records
    assert [item.id for item in kept] == [item.id for item in result.kept] and kept
    for item in kept:
        votes = {letter: item.votes.get(letter, 0) + item.recovered_votes.get(letter, 0) for letter in item.options}
        top = max(votes.values())
        assert votes[item.label] == top and list(votes.values()).count(top) == 1
        assert item.agreement == pytest.approx(top / sum(votes.values()))
        assert 0.5 <= item.agreement <= 0.9 and item.n_samples == 8
    assert {item.label for item in kept} <= {"B", "C"}
    keys = {item.id: kb_key(item) for item in items}
    correct = sum(item.label == keys[item.id] for item in kept)
    assert report["precision_kept"]["correct"] == correct and report["precision_kept"]["n"] == len(kept)

    for kind in ("json", "markdown", "png"):
        assert Path(result.paths[kind]).is_file()
    assert Path(result.paths["png"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(Path(result.paths["json"]).read_text())["kept"] == len(kept)
    metrics = result.metrics()
    assert metrics["kept"] == len(kept) and metrics["items"] == 12.0
    assert all(isinstance(value, float) for value in metrics.values())

    # A rerun with other bounds reuses every cached completion: nothing is generated again.
    cache_files = list((tmp_path / "cache").rglob("completions.jsonl"))
    assert len(cache_files) == 1
    before = cache_files[0].read_text()
    wider = run_labeling(LabelingConfig(**{**config.__dict__, "max_agreement": 1.0}))
    assert cache_files[0].read_text() == before
    assert wider.audit["kept"] >= report["kept"]
    # Another sampling setting is another cache entry, never the old answers.
    run_labeling(LabelingConfig(**{**config.__dict__, "n_samples": 4}))
    assert len(list((tmp_path / "cache").rglob("completions.jsonl"))) == 2


def test_permuted_votes_do_not_follow_the_answerers_favourite_position_and_the_audit_has_both(tiny_answerer, tmp_path):
    """The tiny answerer says "B" (or "C") whatever the options: with the options in the question's order every
    vote elects B or C; with each sample in its own order its "B" is a different option each time, mapped back."""
    items = make_items(8)
    data = tmp_path / "items.jsonl"
    write_jsonl(data, items)
    config = LabelingConfig(
        data=str(data), out=str(tmp_path / "labeled.jsonl"), generator=GeneratorConfig(model=str(tiny_answerer), batch_size=96),
        n_samples=8, sampling=SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=12, seed=0),
        min_agreement=0.0, max_agreement=1.0, min_parsed=4, cache_dir=str(tmp_path / "cache"), permute_options=True, audit_option_order=True,
    )
    result = run_labeling(config)
    by_order = result.audit["by_order"]
    assert set(by_order) == {"fixed", "permuted"} and by_order["permuted"]["voted"] == result.audit["voted"]
    fixed = run_labeling(LabelingConfig(**{**config.__dict__, "permute_options": False, "audit_option_order": False,
                                            "out": str(tmp_path / "fixed.jsonl")}))
    assert {item.label for item in fixed.kept} <= {"B", "C"} and fixed.audit["kept"] == by_order["fixed"]["kept"]
    assert fixed.audit["precision_voted"] == by_order["fixed"]["precision_voted"], "the audit's fixed-order vote is the plain run's"
    permuted_labels = [item.label for item in result.kept]
    assert set(permuted_labels) - {"B", "C"}, f"permuted votes still follow a position: {permuted_labels}"
    mean_agreement = lambda outcomes: sum(o.agreement for o in outcomes) / len(outcomes)  # noqa: E731
    assert mean_agreement(result.outcomes) < mean_agreement(fixed.outcomes) - 0.2, "a position preference no longer agrees with itself"
    for item in result.kept:  # votes are over the question's own letters, each sample counted once
        assert sum(item.votes.values()) + sum(item.recovered_votes.values()) <= 8 and set(item.votes) <= set("ABCD")
    assert "## Fixed and permuted option orders" in to_markdown(result.audit)
    metrics = result.metrics()
    assert {"order.fixed.precision_voted", "order.permuted.precision_voted"} <= set(metrics)
    # the same seed gives the same permuted votes (from the cache or sampled again)
    again = run_labeling(LabelingConfig(**{**config.__dict__, "audit_option_order": False, "cache_dir": str(tmp_path / "cache2"),
                                            "out": str(tmp_path / "again.jsonl")}))
    assert [(i.id, i.label, i.votes) for i in again.kept] == [(i.id, i.label, i.votes) for i in result.kept]


@pytest.mark.slow
def test_recovery_keeps_items_free_form_parsing_drops(tiny_answerer, tmp_path):
    """Completions cut off before "The answer is B." state no answer: free-form votes alone keep nothing,
    the constrained second turn's votes label every question, and the audit reports both kinds apart."""
    data = tmp_path / "items.jsonl"
    write_jsonl(data, make_items(8))
    config = LabelingConfig(
        data=str(data),
        out=str(tmp_path / "labeled.jsonl"),
        generator=GeneratorConfig(model=str(tiny_answerer), batch_size=64),
        n_samples=4,
        sampling=SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=3, seed=0),
        min_agreement=0.0,
        max_agreement=1.0,
        min_parsed=4,
        cache_dir=str(tmp_path / "cache"),
    )
    free_only = run_labeling(LabelingConfig(**{**config.__dict__, "recovery": False}))
    assert free_only.kept == [] and free_only.audit["dropped"] == {"too_few_parsed": 8}
    assert free_only.parse_rate == 0.0 and free_only.recovered_rate == 0.0
    assert "by_source" in free_only.audit and free_only.audit["by_source"] == {}

    result = run_labeling(config)
    assert result.parse_rate == 0.0 and result.recovered_rate == 1.0
    assert len(result.kept) == 8 - result.audit["dropped"].get("tie", 0) > 0
    for item in result.kept:
        assert item.votes == {} and sum(item.recovered_votes.values()) == 4
        assert item.recovered_votes[item.label] == max(item.recovered_votes.values())
    by_source = result.audit["by_source"]
    assert by_source["free"]["voted"] == 0 and by_source["free"]["yield"] == 0.0
    assert by_source["free"]["dropped"] == {"too_few_parsed": 8} and by_source["free"]["parsed_answers"] == 0
    assert by_source["recovered"]["parsed_answers"] == by_source["both"]["parsed_answers"] == 32
    assert by_source["recovered"]["kept"] == by_source["both"]["kept"] == result.audit["kept"] == len(result.kept)
    keys = {item.id: kb_key(item) for item in make_items(8)}
    correct = sum(item.label == keys[item.id] for item in result.kept)
    assert by_source["recovered"]["precision_kept"]["correct"] == correct
    markdown = Path(result.paths["markdown"]).read_text()
    assert "| free-form votes | 0 | 0 | 0 | 0.0% |" in markdown and "| recovered votes | 32 |" in markdown
    metrics = result.metrics()
    assert metrics["recovered_rate"] == 1.0 and metrics["free.yield"] == 0.0


@pytest.mark.slow
def test_label_cli_reports_bad_records_and_skips_them(tiny_answerer, tmp_path, capsys):
    from medssr.cli import main

    data = tmp_path / "items.jsonl"
    write_jsonl(data, make_items(4))
    with data.open("a") as handle:
        handle.write(json.dumps({"id": "bad", "stem": "s", "options": {"A": "x"}}) + "\n")
    args = ["label", "--model", str(tiny_answerer), "--data", str(data), "--out", str(tmp_path / "out.jsonl"),
            "--n-samples", "4", "--max-tokens", "12", "--seed", "0", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 2
    assert "items.jsonl:5: field 'options'" in capsys.readouterr().err
    assert main(args + ["--on-error", "skip"]) == 0
    printed = capsys.readouterr().out
    assert "rejected records 1" in printed and "of 4 items" in printed
    assert (tmp_path / "out.audit.png").is_file()


@pytest.mark.slow
def test_an_over_long_question_is_a_rejected_record_and_the_rest_are_labelled(tiny_answerer, tmp_path):
    from medssr.data import RecordError

    items = make_items(4)
    items[2] = items[2].model_copy(update={"stem": "findings " * 1_000_000})  # about 9 MB
    data = tmp_path / "items.jsonl"
    write_jsonl(data, items)
    config = LabelingConfig(
        data=str(data), out=str(tmp_path / "labeled.jsonl"),
        generator=GeneratorConfig(model=str(tiny_answerer), batch_size=16, max_prompt_tokens=256),
        n_samples=2, sampling=SamplingParams(temperature=1.0, max_tokens=8, seed=0),
        min_agreement=0.0, max_agreement=1.0, min_parsed=1, cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(RecordError, match=r"items.jsonl:3: field 'stem'.*max_prompt_tokens"):
        run_labeling(config)
    result = run_labeling(LabelingConfig(**{**config.__dict__, "on_error": "skip"}))
    assert result.rejected_records == 1 and result.audit["items"] == 3
    assert {o.item_id for o in result.outcomes} == {"q0", "q1", "q3"}
