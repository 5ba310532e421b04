"""Record types and validated JSONL IO.

Every dataset in medssr is JSONL of one of these records. A bad line is reported with its file, line
and field; with ``on_error="skip"`` good lines are kept and the rejected ones counted.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from medssr.errors import UserError
from medssr.storage import atomic_writer

LETTERS = string.ascii_uppercase[:10]  # A..J: at most ten options
MIN_OPTIONS, MAX_OPTIONS = 2, 10


class MCQItem(BaseModel):
    """A multiple-choice question: the unit of synthesis, labelling, training and evaluation."""

    model_config = ConfigDict(extra="forbid")

    id: str
    stem: str
    options: dict[str, str]
    answer: str | None = None
    source: str = ""
    metadata: dict[str, Any] = {}

    @field_validator("id", "stem")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("options")
    @classmethod
    def _options_are_lettered(cls, options: dict[str, str]) -> dict[str, str]:
        if not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
            raise ValueError(f"must have {MIN_OPTIONS} to {MAX_OPTIONS} options, got {len(options)}")
        expected = list(LETTERS[: len(options)])
        if sorted(options) != expected:
            raise ValueError(f"keys must be the letters {''.join(expected)}, got {''.join(sorted(options))}")
        for letter, text in options.items():
            if not str(text).strip():
                raise ValueError(f"option {letter} is empty")
        return {k: options[k] for k in expected}

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> MCQItem:
        if self.answer is not None and self.answer not in self.options:
            raise ValueError(f"answer: {self.answer!r} is not one of the options {''.join(self.options)}")
        return self

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(self.options)

    def render(self) -> str:
        """The question as the model sees it: stem, then one option per line."""
        lines = [self.stem.rstrip()] + [f"{letter}. {text}" for letter, text in self.options.items()]
        return "\n".join(lines)


class LabeledItem(MCQItem):
    """An item with a pseudo-label from the policy's own majority vote (stage-1 training data)."""

    label: str
    agreement: float
    votes: dict[str, int] = {}
    """Free-form answers per letter (read from the completions)."""
    recovered_votes: dict[str, int] = {}
    """Letters of the constrained second turn, for samples that stated no answer; the label is the
    majority over both kinds."""
    n_samples: int = 0

    @model_validator(mode="after")
    def _label_is_an_option(self) -> LabeledItem:
        if self.label not in self.options:
            raise ValueError(f"label: {self.label!r} is not one of the options {''.join(self.options)}")
        if not 0.0 <= self.agreement <= 1.0:
            raise ValueError(f"agreement: {self.agreement} is outside [0, 1]")
        return self


class EvalResult(BaseModel):
    """One sampled answer of one model to one benchmark question."""

    model_config = ConfigDict(extra="forbid")

    model: str
    benchmark: str
    item_id: str
    sample: int
    completion: str
    answer: str | None
    strict: str | None
    lenient: str | None
    recovered: str | None = None
    correct_strict: bool
    correct_lenient: bool


Record = TypeVar("Record", bound=BaseModel)


class RecordError(UserError):
    """A record that failed validation, located by file, line and field."""

    def __init__(self, path: str | os.PathLike, line: int, field_name: str, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field_name, message
        super().__init__(f"{self.path}:{line}: field '{field_name}': {message}")


@dataclass
class ReadResult:
    """The records that passed validation and the errors of those that did not."""

    records: list
    errors: list[RecordError] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    """The line (JSONL) or list position (reference JSON) of each record, for reports of later checks."""

    @property
    def rejected(self) -> int:
        return len(self.errors)


def _errors_of(exc: ValidationError, path, line: int) -> list[RecordError]:
    found = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"]) or "record"
        message = err["msg"].removeprefix("Value error, ")
        if ": " in message and loc == "record":
            loc, _, message = message.partition(": ")
        found.append(RecordError(path, line, loc, message))
    return found


def parse_record(data: Any, record_type: type[Record], path="<record>", line: int = 1) -> Record:
    if not isinstance(data, dict):
        raise RecordError(path, line, "record", f"expected a JSON object, got {type(data).__name__}")
    try:
        return record_type.model_validate(data)
    except ValidationError as exc:
        raise _errors_of(exc, path, line)[0] from None


class _UniqueIds:
    """Remembers where each record id was first seen; a second record with it is a RecordError."""

    def __init__(self, path, unit: str):
        self.path, self.unit, self.first_at = path, unit, {}

    def check(self, record: BaseModel, line: int) -> None:
        record_id = getattr(record, "id", None)
        if record_id is None:
            return
        if record_id in self.first_at:
            raise RecordError(self.path, line, "id", f"duplicate id {record_id!r} (first at {self.unit} {self.first_at[record_id]})")
        self.first_at[record_id] = line


def _decoded_line(raw: bytes, path, number: int) -> str:
    """One line as text; bytes that are not UTF-8 reject this line only (a BOM before the first is dropped)."""
    if number == 1:
        raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(path, number, "record", f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line)") from None


def read_jsonl(
    path: str | os.PathLike,
    record_type: type[Record] = MCQItem,
    on_error: Literal["raise", "skip"] = "raise",
) -> ReadResult:
    """Read and validate a JSONL file. ``on_error="skip"`` keeps good lines and collects the errors: invalid
    JSON or UTF-8, failed validation, a second record with an id already read. Blank lines are ignored."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    result = ReadResult(records=[])
    ids = _UniqueIds(path, "line")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = _decoded_line(raw, path, number)
                if not text.strip():
                    continue
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise RecordError(path, number, "record", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
                record = parse_record(data, record_type, path, number)
                ids.check(record, number)
                result.records.append(record)
                result.lines.append(number)
            except RecordError as err:
                if on_error == "raise":
                    raise
                result.errors.append(err)
    return result


def write_jsonl(path: str | os.PathLike, records) -> int:
    """Write records (pydantic models or dicts) atomically; returns the count written."""
    count = 0
    with atomic_writer(path) as handle:
        for record in records:
            data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
    return count


_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8
_OPTION_LINE = re.compile(r"^\s*([A-J])[.)](?:\s+(.*?))?\s*$")


def _options_from(lines: list[str], start: int) -> dict[str, str]:
    """The options A, B, ... from ``lines[start]`` (an "A." line) to the end: each option's text runs
    until the next letter's line, so it may span several lines (a Markdown table in MedXpertQA)."""
    texts: dict[str, list[str]] = {}
    for line in lines[start:]:
        match = _OPTION_LINE.match(line)
        if match and match.group(1) == LETTERS[len(texts)] and len(texts) < len(LETTERS):
            texts[match.group(1)] = [match.group(2) or ""]
        else:
            texts[LETTERS[len(texts) - 1]].append(line.rstrip())
    return {letter: "\n".join(text).strip() for letter, text in texts.items()}


def parse_question_text(text: str) -> tuple[str, dict[str, str]]:
    """Split a reference-format question into its stem and the ``A. ...`` options that end it.

    The options start at the last "A." line that is followed by a "B." line, so a stem line that only
    looks like an option ("A. fumigatus was isolated ...") stays in the stem.
    """
    lines = text.rstrip().splitlines()
    while lines and not lines[-1].strip(" \t\"'\u201c\u201d"):
        lines.pop()  # a stray closing quote after the options (38 MedQA questions of the reference set)
    starts = [index for index, line in enumerate(lines) if (match := _OPTION_LINE.match(line)) and match.group(1) == "A"]
    options: dict[str, str] = {}
    cut = len(lines)
    for start in reversed(starts):
        options, cut = _options_from(lines, start), start
        if len(options) >= MIN_OPTIONS:
            break
    return "\n".join(lines[:cut]).strip(), options


def options_in_text(text: str) -> dict[str, str]:
    """The ``A. ...`` option lines that end a question, or {} when the text is not multiple-choice."""
    try:
        _, options = parse_question_text(text)
    except ValueError:
        return {}
    return options if len(options) >= MIN_OPTIONS else {}


def write_reference_benchmark(path: str | os.PathLike, items: list[MCQItem]) -> int:
    """Write MCQ items atomically as a benchmark in the MedSSR reference format (what
    :func:`read_reference_benchmark` reads back: the options as "A. ..." lines ending the question, the key as
    "gold", the metadata as further fields); returns the count written."""
    rows = [{"id": item.id, "question": "\n".join([item.stem, *(f"{letter}. {text}" for letter, text in item.options.items())]),
             "gold": item.answer, "name": item.source, **item.metadata} for item in items]
    with atomic_writer(path) as handle:
        handle.write(json.dumps(rows, ensure_ascii=False))
    return len(rows)


def read_reference_benchmark(
    path: str | os.PathLike, on_error: Literal["raise", "skip"] = "raise"
) -> ReadResult:
    """Read a benchmark in the MedSSR reference format: a JSON list of ``{id, question, gold, ...}``."""
    path = Path(path)
    try:
        # A BOM is dropped; bytes that are not UTF-8 survive decoding as lone surrogates, so that only the
        # questions holding them are rejected, not the whole file.
        rows = json.loads(path.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape"))
    except FileNotFoundError:
        raise UserError(f"no such file: {path}") from None
    except json.JSONDecodeError as exc:
        raise RecordError(path, exc.lineno, "record", f"invalid JSON ({exc.msg})") from None
    if not isinstance(rows, list):
        raise RecordError(path, 1, "record", "expected a JSON list of questions")
    result = ReadResult(records=[])
    ids = _UniqueIds(path, "question")
    name = path.stem.removeprefix("test_short_")
    for index, row in enumerate(rows, start=1):
        try:
            if not isinstance(row, dict):
                raise RecordError(path, index, "record", "expected a JSON object")
            if _NOT_UTF8.search(json.dumps(row, ensure_ascii=False)):
                raise RecordError(path, index, "record", "not valid UTF-8 (a byte that decodes to no character)")
            for key in ("id", "question", "gold"):
                if key not in row:
                    raise RecordError(path, index, key, "missing")
            try:
                stem, options = parse_question_text(str(row["question"]))
            except ValueError as exc:
                raise RecordError(path, index, "question", str(exc)) from None
            extra = {k: v for k, v in row.items() if k not in ("id", "question", "gold")}
            data = {
                "id": str(row["id"]),
                "stem": stem,
                "options": options,
                "answer": str(row["gold"]).strip().upper(),
                "source": str(row.get("name") or name),
                "metadata": extra,
            }
            record = parse_record(data, MCQItem, path, index)
            ids.check(record, index)
            result.records.append(record)
            result.lines.append(index)
        except RecordError as err:
            if on_error == "raise":
                raise
            result.errors.append(err)
    return result
