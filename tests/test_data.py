import json
import os
from pathlib import Path

import pytest

from medssr.data import LabeledItem, MCQItem, RecordError, parse_record, read_jsonl, read_reference_benchmark, write_jsonl
from medssr.errors import UserError
from medssr.locations import benchmarks_dir

DATA = Path(__file__).parent / "data"
SHARED_BENCHMARKS = benchmarks_dir(required=False) or Path(os.devnull)
GOOD = {"id": "q1", "stem": "Which gene causes Rett syndrome?", "options": {"A": "MECP2", "B": "FMR1", "C": "CFTR"}, "answer": "A"}


def error_of(data: dict, record_type=MCQItem) -> RecordError:
    with pytest.raises(RecordError) as caught:
        parse_record(data, record_type, "items.jsonl", 7)
    return caught.value


def test_good_item_renders_stem_then_options():
    item = MCQItem.model_validate(GOOD)
    assert item.letters == ("A", "B", "C")
    assert item.render() == "Which gene causes Rett syndrome?\nA. MECP2\nB. FMR1\nC. CFTR"


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"id": "  "}, "id", "must not be empty"),
        ({"id": None}, "id", "valid string"),
        ({"stem": ""}, "stem", "must not be empty"),
        ({"options": {"A": "x"}}, "options", "2 to 10 options, got 1"),
        ({"options": {chr(65 + i): f"o{i}" for i in range(11)}}, "options", "2 to 10 options, got 11"),
        ({"options": {"A": "x", "C": "y"}}, "options", "letters AB, got AC"),
        ({"options": {"A": "x", "B": " "}}, "options", "option B is empty"),
        ({"answer": "D"}, "answer", "'D' is not one of the options ABC"),
        ({"difficulty": "hard"}, "difficulty", "Extra inputs are not permitted"),
    ],
)
def test_every_field_error_is_named(change, field, message):
    err = error_of({**GOOD, **change})
    assert err.field == field and message in err.message
    assert str(err).startswith(f"items.jsonl:7: field '{field}': ")


def test_missing_field_and_non_object_are_named():
    assert error_of({k: v for k, v in GOOD.items() if k != "stem"}).field == "stem"
    with pytest.raises(RecordError, match="field 'record': expected a JSON object, got list"):
        parse_record([1], MCQItem, "items.jsonl", 1)


def test_labeled_item_label_and_agreement_errors():
    labeled = {**GOOD, "label": "B", "agreement": 0.75, "votes": {"B": 3, "A": 1}, "n_samples": 4}
    assert LabeledItem.model_validate(labeled).label == "B"
    err = error_of({**labeled, "label": "E"}, LabeledItem)
    assert err.field == "label" and "'E' is not one of the options ABC" in err.message
    err = error_of({**labeled, "agreement": 1.5}, LabeledItem)
    assert err.field == "agreement" and "outside [0, 1]" in err.message
    assert error_of({k: v for k, v in labeled.items() if k != "label"}, LabeledItem).field == "label"


def test_reference_format_reader_parses_options_and_gold():
    result = read_reference_benchmark(DATA / "reference_benchmark.json")
    assert result.rejected == 0 and [item.id for item in result.records] == ["raredx-0001", "raredx-0002", "raredx-0003"]
    rett, gaucher, dmd = result.records
    assert rett.stem == "A 3-year-old girl has regression of hand use, stereotypic hand wringing and acquired microcephaly.\nWhich gene is most likely mutated?"
    assert rett.options == {"A": "MECP2", "B": "FMR1", "C": "CFTR", "D": "HBB"} and rett.answer == "A"
    assert rett.source == "raredx" and rett.metadata == {"name": "raredx", "long": False}
    assert gaucher.answer == "A" and list(gaucher.options.values()) == ["yes", "no", "maybe"]
    # "A)" option markers, a blank line in the stem, and a stray closing quote after the options.
    assert dmd.letters == ("A", "B", "C", "D", "E") and dmd.options["C"] == "X-linked recessive" and dmd.answer == "C"
    assert dmd.stem.endswith("What is the mode of inheritance?")


def test_reference_format_reader_takes_multi_line_options_and_keeps_an_option_like_stem_line(tmp_path):
    question = "\n".join([
        "Sputum culture grows a mould.",
        "A. fumigatus was isolated from a sample last year.",
        "Which growth chart fits this patient?",
        "A. | **Motor** | **Language** |",
        "| --- | --- |  ",
        "| Walks | 3 words |",
        "B. | **Motor** | **Language** |",
        "| --- | --- |",
        "",
        "| Runs | 50 words |",
        "C. Neither",
    ])
    path = tmp_path / "test_short_tables.json"
    path.write_text(json.dumps([{"id": "t1", "question": question, "gold": "b"}]))
    result = read_reference_benchmark(path)
    assert result.rejected == 0
    item = result.records[0]
    assert item.stem == "Sputum culture grows a mould.\nA. fumigatus was isolated from a sample last year.\nWhich growth chart fits this patient?"
    assert item.options == {
        "A": "| **Motor** | **Language** |\n| --- | --- |\n| Walks | 3 words |",
        "B": "| **Motor** | **Language** |\n| --- | --- |\n\n| Runs | 50 words |",
        "C": "Neither",
    }
    assert item.answer == "B"


@pytest.mark.skipif(not SHARED_BENCHMARKS.is_dir(), reason="no benchmarks location here (MEDSSR_BENCHMARKS_DIR)")
def test_medxpertqa_reference_file_reads_whole_with_ten_options_each():
    result = read_reference_benchmark(SHARED_BENCHMARKS / "test_short_medxpertqa.json", on_error="skip")
    assert result.errors == []
    assert len(result.records) == 1449 and {len(item.options) for item in result.records} == {10}
    assert sum("\n" in text for item in result.records for text in item.options.values()) >= 8


def test_prompt_limit_rejects_over_long_benchmark_questions_by_position_and_field(tiny_model, tmp_path):
    from medssr.generation.base import GeneratorConfig
    from medssr.prompt_limit import PromptLimit
    from medssr.prompts import build_prompt

    rows = [{"id": f"q{i}", "question": f"Which gene, case {i}?\nA. MECP2\nB. FMR1", "gold": "A"} for i in range(3)]
    rows[1]["question"] = "ataxia " * 1_500_000 + "\nA. MECP2\nB. FMR1"  # ~10 MB
    rows.append({"id": "long-option", "question": "Which gene?\nA. MECP2\nB. " + "FMR1 " * 400, "gold": "A"})
    path = tmp_path / "test_short_long.json"
    path.write_text(json.dumps(rows))
    limit = PromptLimit.for_generator(GeneratorConfig(model=str(tiny_model), max_prompt_tokens=256))

    for style in ("chat", "text"):
        read = limit.reject_long(read_reference_benchmark(path), path, lambda item: build_prompt(item, style))
        assert [item.id for item in read.records] == ["q0", "q2"] and read.lines == [1, 3]
        assert [(e.line, e.field) for e in read.errors] == [(2, "stem"), (4, "options.B")]
        assert "characters, over 256 tokens" in read.errors[0].message and "; the limit is 256" in read.errors[1].message
    assert PromptLimit.for_generator(GeneratorConfig(backend="openai", model="served-name")) is None


def test_reference_format_reader_names_bad_rows_and_skips_them():
    path = DATA / "reference_benchmark_broken.json"
    with pytest.raises(RecordError, match=r"reference_benchmark_broken.json:2: field 'gold': missing"):
        read_reference_benchmark(path)
    result = read_reference_benchmark(path, on_error="skip")
    assert [item.id for item in result.records] == ["ok-1"] and result.rejected == 4
    assert [(e.line, e.field) for e in result.errors] == [(2, "gold"), (3, "options"), (4, "answer"), (5, "record")]
    assert result.records[0].source == "reference_benchmark_broken"


def test_malformed_jsonl_keeps_good_lines_under_skip(tmp_path):
    path = tmp_path / "items.jsonl"
    lines = [
        json.dumps(GOOD),
        "{not json",
        json.dumps({**GOOD, "id": "q3", "answer": "Z"}),
        "",
        json.dumps({**GOOD, "id": "q5"}),
        json.dumps({**GOOD, "id": "q6", "options": {"A": "only one"}}),
    ]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as caught:
        read_jsonl(path)
    assert str(caught.value).startswith(f"{path}:2: field 'record': invalid JSON")
    result = read_jsonl(path, on_error="skip")
    assert [item.id for item in result.records] == ["q1", "q5"] and result.rejected == 3
    assert [(e.path, e.line, e.field) for e in result.errors] == [(str(path), 2, "record"), (str(path), 3, "answer"), (str(path), 6, "options")]
    with pytest.raises(ValueError, match="on_error"):
        read_jsonl(path, on_error="ignore")
    with pytest.raises(UserError, match="no such file"):
        read_jsonl(tmp_path / "missing.jsonl")


def jsonl_bytes(*records: dict) -> list[bytes]:
    return [json.dumps(record, ensure_ascii=False).encode("utf-8") for record in records]


def test_jsonl_with_a_bom_keeps_its_first_record(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(jsonl_bytes(GOOD, {**GOOD, "id": "q2"})) + b"\n")
    result = read_jsonl(path)  # on_error="raise": nothing is wrong with this file
    assert [item.id for item in result.records] == ["q1", "q2"] and result.lines == [1, 2]


def test_a_line_that_is_not_utf8_is_rejected_by_file_and_line_and_the_rest_kept(tmp_path):
    path = tmp_path / "items.jsonl"
    first, bad, last = jsonl_bytes(GOOD, {**GOOD, "id": "q2", "stem": "Which gene causes Rett syndrome \u00e9?"}, {**GOOD, "id": "q3"})
    bad = bad.replace("\u00e9".encode("utf-8"), b"\xe9")  # latin-1, as a spreadsheet export writes it
    path.write_bytes(b"\n".join([first, bad, last]) + b"\n")
    with pytest.raises(RecordError, match=rf"^{path}:2: field 'record': not valid UTF-8 \(byte 0xe9 at byte \d+ of the line\)$"):
        read_jsonl(path)
    result = read_jsonl(path, on_error="skip")
    assert [item.id for item in result.records] == ["q1", "q3"] and result.lines == [1, 3]
    assert [(e.line, e.field) for e in result.errors] == [(2, "record")]


def test_duplicate_ids_are_reported_not_overwritten(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b"\n".join(jsonl_bytes(GOOD, {**GOOD, "id": "q2"}, {**GOOD, "stem": "Another question?"})) + b"\n")
    with pytest.raises(RecordError, match=rf"^{path}:3: field 'id': duplicate id 'q1' \(first at line 1\)$"):
        read_jsonl(path)
    result = read_jsonl(path, on_error="skip")
    assert [(item.id, item.stem) for item in result.records] == [("q1", GOOD["stem"]), ("q2", GOOD["stem"])]
    assert result.rejected == 1


def test_blank_and_whitespace_lines_are_ignored_and_line_numbers_kept(tmp_path):
    path = tmp_path / "items.jsonl"
    first, second = jsonl_bytes(GOOD, {**GOOD, "id": "q2"})
    path.write_bytes(b"\n".join([b"", first, b"   ", b"\t", second, b""]) + b"\r\n\n")
    result = read_jsonl(path)
    assert [item.id for item in result.records] == ["q1", "q2"] and result.lines == [2, 5] and result.rejected == 0


def reference_rows(*ids: str) -> list[dict]:
    return [{"id": i, "question": f"Question {i}?\nA. one\nB. two\nC. three", "gold": "B"} for i in ids]


def test_reference_benchmark_with_a_bom_loads_whole(tmp_path):
    path = tmp_path / "test_short_bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(reference_rows("r1", "r2")).encode())
    result = read_reference_benchmark(path)
    assert [item.id for item in result.records] == ["r1", "r2"]


def test_reference_benchmark_rejects_only_the_question_that_is_not_utf8_and_duplicate_ids(tmp_path):
    path = tmp_path / "test_short_mixed.json"
    rows = reference_rows("r1", "r2", "r1", "r4")
    rows[1]["question"] = "Caf\u00e9 au lait spots?\nA. one\nB. two"
    path.write_bytes(json.dumps(rows, ensure_ascii=False).encode("utf-8").replace("\u00e9".encode("utf-8"), b"\xe9"))
    with pytest.raises(RecordError, match=rf"^{path}:2: field 'record': not valid UTF-8"):
        read_reference_benchmark(path)
    result = read_reference_benchmark(path, on_error="skip")
    assert [item.id for item in result.records] == ["r1", "r4"] and result.lines == [1, 4]
    assert [(e.line, e.field) for e in result.errors] == [(2, "record"), (3, "id")]
    assert str(result.errors[1]).endswith("duplicate id 'r1' (first at question 1)")


def test_write_then_read_round_trip(tmp_path):
    items = [MCQItem.model_validate({**GOOD, "id": f"q{i}", "metadata": {"kb": "ORPHA:778", "evidence": ["HP:0002376"]}}) for i in range(3)]
    path = tmp_path / "nested" / "out.jsonl"
    assert write_jsonl(path, items) == 3
    assert read_jsonl(path).records == items


def test_atomic_write_leaves_the_original_when_the_writer_fails(tmp_path):
    path = tmp_path / "items.jsonl"
    write_jsonl(path, [GOOD])
    original = path.read_text()

    def records():
        yield {**GOOD, "id": "new"}
        raise RuntimeError("synthesis crashed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        write_jsonl(path, records())
    assert path.read_text() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.jsonl"]  # no temp file left behind
