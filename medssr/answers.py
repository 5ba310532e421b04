"""Reading the chosen option out of a completion: the one implementation behind rewards, labels and scores.

Two modes, always relative to the question's OWN option letters (a letter the question does not have
is never returned):

``strict``
    The LAST "The answer is X" statement (also "The final/correct answer is X"). Tolerated around the
    letter: a colon or dash, ``(X)``, ``[X]``, ``**X**``, ``\\boxed{X}``, ``option X``, ``X.`` and lower
    case ``x``. A statement only counts when the letter stands alone as a token: "The answer is Based on
    ..." (a word), "The answer is A patient ..." (an article), "The answer is B cells" (a term),
    "The answer is B or C" (several letters) and "The answer is [LETTER]" (the template) hold no letter
    and are not statements. After the letter comes the end, a line break, punctuation, a connective
    ("because", "since", ...) or, when the options are given, the chosen option's own text. If the
    last statement names a letter the question does not have, the answer is None: the model's final
    word was invalid, and an earlier statement it revised is not its answer.

``lenient``
    Strict first: whenever a strict statement exists, lenient returns the same thing, so lenient only
    adds answers where strict found no statement. Then, in order of how explicit the evidence is:
    1. the last ``\\boxed{...}`` (a letter or an option's text);
    2. the last answer marker: "Answer: X", "Final answer: X", "my answer is X", "the answer would be X",
       "the correct option is X", "X is the correct answer", "option X is correct", or an option's exact
       text after such a marker or after "The answer is";
    3. a completion that is nothing but a letter ("B", "(B)", "**B.**", "B. <option B's text>");
    4. the last line being exactly one option's text (normalised: case, spaces, markdown, end punctuation);
    5. exactly one distinct letter in bold (``**B**``, ``**B. text**``);
    6. exactly one distinct upper-case letter in parentheses, ``(B)``.
    Classes 5-6 are weak evidence and are not used when the completion looks unfinished (it ends
    mid-sentence, as truncated reasoning does): an analysis cut off after "(A) ... (B)" never
    concluded anything.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

Mode = Literal["strict", "lenient"]

_CONNECTIVES = frozenset(
    "because since as which given due being here so therefore thus hence with from per".split()
)
# Opening decorations tolerated between "answer is" and the letter.
_DECORATION = r"(?:\s*(?:\*\*|\*|__|_|`|\$|\\boxed\s*\{|\\text(?:bf)?\s*\{|\\mathrm\s*\{|\(|\[|\{|\"|'|option\s+|choice\s+))*\s*"
_LETTER = r"([A-Za-z])(?![A-Za-z0-9])"

_STRICT = re.compile(
    r"\bthe\s+(?:(?:final|correct|best|right)\s+)?answer\s+is\b(?!n[\'\u2019]t)\s*(?:[:\-\u2013\u2014]\s*)*" + _DECORATION + r"(?:" + _LETTER + r")?",
    re.IGNORECASE,
)
_MARKER_LEAD = re.compile(
    r"(?:\b(?:final\s+|correct\s+|best\s+|right\s+|my\s+)?answer\s*(?:is\b(?!n[\'\u2019]t)|:|=|would\s+be|should\s+be|must\s+be)"
    r"|\bthe\s+(?:correct|best|right)\s+(?:option|choice)\s+(?:is|would\s+be)\b\s*:?)",
    re.IGNORECASE,
)
_MARKER = re.compile(_MARKER_LEAD.pattern + r"\s*(?:[:\-\u2013\u2014]\s*)*" + _DECORATION + r"(?:" + _LETTER + r")?", re.IGNORECASE)
_LETTER_IS_CORRECT = re.compile(
    r"(?:\b(?:option|choice)\s+\(?([A-J])\)?\s+is\s+(?:the\s+)?(?:correct|right|best)(?=\s*(?:[.!,;\n]|$))"
    r"|(?<![\w(])\(?([A-J])\)?\s+is\s+the\s+(?:correct|right|best)\s+(?:answer|option|choice)\b)",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_BOLD = re.compile(r"\*\*([^*\n]{1,200}?)\*\*")
_BOLD_LETTER = re.compile(r"^(?:option\s+|choice\s+)?[(\[]?([A-J])[)\]]?(?:[.:)]\s*.*)?$", re.IGNORECASE | re.DOTALL)
_PAREN_LETTER = re.compile(r"(?<![\w(])\(([A-J])\)(?![\w])")
_MULTIPLE = re.compile(r"[)\]*_]*\s*(?:,|/|&|\bor\b|\band\b)\s*(?:option\s+|[(\[])?[*_]*[A-J](?![A-Za-z0-9_])")
_FINISHED_END = set(".!?)]}*\"'`$\u201d")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")


def normalise(text: str) -> str:
    """Lower case, NFKC, no markdown/LaTeX wrappers, single spaces, no punctuation at either end."""
    text = unicodedata.normalize("NFKC", text)
    text = _LATEX_WRAPPERS.sub(r"\1", text)
    text = re.sub(r"[*_`$]", "", text)
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.strip(" .,;:!?\"'()[]{}\u201c\u201d")


def _letter_set(letters: Sequence[str]) -> tuple[str, ...]:
    found = tuple(str(letter).strip().upper() for letter in letters if str(letter).strip())
    if not found or any(len(letter) != 1 for letter in found):
        raise ValueError(f"letters must be single option letters like 'ABCD', got {letters!r}")
    return found


def _stands_alone(text: str, end: int, letter: str, options: Mapping[str, str] | None) -> bool:
    """Whether the letter ending at ``end`` is a standalone choice, not the start of a word or phrase."""
    rest = text[end:]
    if _MULTIPLE.match(rest):
        return False
    if not rest.strip(" \t") or rest.startswith(("\n", "\r")) or rest.lstrip(" \t").startswith(("\n", "\r")):
        return True
    first = rest[0]
    if first in " \t":
        after = rest.lstrip(" \t")
        if not (after[0].isalnum() or after[0] == "_"):
            return True  # "B (because ...)", "B - Hypertension", "B **"
        word = re.match(r"[A-Za-z]+", after)
        if word and word.group(0).lower() in _CONNECTIVES:
            return True
        return _starts_with_option_text(after, letter, options)
    if first == "-":
        return not (len(rest) > 1 and rest[1].isalnum())  # "B-cell" is a term
    if first in "'\u2019" and len(rest) > 1 and rest[1].isalpha():
        return False  # a contraction, "isn't"
    if first == "." and re.match(r"\.[A-Za-z]\.", rest):
        return False  # "e.g.", "i.e."
    return True  # punctuation: "B.", "B)", "B**", "B:", "B}"


def _starts_with_option_text(after: str, letter: str, options: Mapping[str, str] | None) -> bool:
    if not options:
        return False
    text = options.get(letter.upper())
    if not text:
        return False
    wanted = normalise(text).split(" ")[:3]
    # "B cells" as option B's text: the letter itself may be the option's first word.
    for said in (after, f"{letter} {after}"):
        if normalise(said).split(" ")[: len(wanted)] == wanted:
            return True
    return False


def _last_token(pattern: re.Pattern, text: str, options) -> tuple[str | None, list[tuple[int, str]]]:
    """The letter of the last match that holds a standalone letter, and the phrases of matches that hold none."""
    letter, phrases = None, []
    for match in pattern.finditer(text):
        candidate = match.group(match.lastindex) if match.lastindex else None
        if candidate and _stands_alone(text, match.end(match.lastindex), candidate, options):
            letter = candidate.upper()
            phrases = []  # a later phrase only counts if it comes after the last letter
        else:
            phrases.append((match.end(), text[match.end() :]))
    return letter, phrases


def _option_text_match(phrase: str, options: Mapping[str, str] | None) -> str | None:
    """The letter whose option text equals the phrase (its first line, or first sentence), if exactly one."""
    if not options:
        return None
    line = phrase.strip().splitlines()[0] if phrase.strip() else ""
    candidates = {normalise(line), normalise(re.split(r"(?<=[^\s.])\.(?:\s|$)", line)[0])}
    candidates.discard("")
    hits = {letter for letter, text in options.items() if normalise(text) in candidates}
    return hits.pop() if len(hits) == 1 else None


def _looks_unfinished(text: str) -> bool:
    stripped = text.rstrip()
    return not stripped or stripped[-1] not in _FINISHED_END


def _decide(letter: str, allowed: tuple[str, ...]) -> str | None:
    return letter if letter in allowed else None


def _strict(text: str, allowed, options) -> tuple[bool, str | None, list]:
    letter, phrases = _last_token(_STRICT, text, options)
    if letter is not None:
        return True, _decide(letter, allowed), phrases
    return False, None, phrases


def _boxed(text: str, allowed, options) -> tuple[bool, str | None]:
    boxes = _BOXED.findall(text)
    if not boxes:
        return False, None
    content = _LATEX_WRAPPERS.sub(r"\1", boxes[-1]).strip()
    match = re.fullmatch(r"(?:option\s+|choice\s+)?[(\[]?([A-Za-z])[)\]]?(?:\s*[.:)]\s*(.*))?", content, re.IGNORECASE | re.DOTALL)
    if match:
        return True, _decide(match.group(1).upper(), allowed)
    letter = _option_text_match(content, options)
    return (True, letter) if letter else (False, None)


def _markers(text: str, allowed, options, statement_phrases) -> tuple[bool, str | None]:
    best_pos, best = -1, None
    for match in _MARKER.finditer(text):
        candidate = match.group(match.lastindex) if match.lastindex else None
        if candidate and _stands_alone(text, match.end(match.lastindex), candidate, options):
            if match.start() > best_pos:
                best_pos, best = match.start(), candidate.upper()
    for match in _LETTER_IS_CORRECT.finditer(text):
        candidate = match.group(1) or match.group(2)
        if match.start() > best_pos:
            best_pos, best = match.start(), candidate.upper()
    # An option's exact text after a marker (or after "The answer is") that held no letter.
    phrases = list(statement_phrases)
    phrases += [(m.end(), text[m.end() :]) for m in _MARKER_LEAD.finditer(text)]
    for position, phrase in sorted(phrases, reverse=True):
        if position <= best_pos:
            break
        letter = _option_text_match(phrase, options)
        if letter:
            return True, letter
    if best is not None:
        return True, _decide(best, allowed)
    return False, None


def _bare(text: str, allowed, options) -> tuple[bool, str | None]:
    content = normalise_wrappers(text)
    match = re.fullmatch(r"(?:option\s+|choice\s+)?[(\[]?([A-Za-z])[)\]]?(?:\s*[.:)]\s*(.*))?\s*[.]?", content, re.IGNORECASE | re.DOTALL)
    if not match:
        return False, None
    letter = match.group(1).upper()
    rest = match.group(2)
    if rest and not (options and letter in options and normalise(rest) == normalise(options[letter])):
        return False, None
    return True, _decide(letter, allowed)


def normalise_wrappers(text: str) -> str:
    text = _LATEX_WRAPPERS.sub(r"\1", text.strip())
    text = re.sub(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}", r"\1", text)
    return re.sub(r"[*_`$]", "", text).strip()


def _unique(letters: list[str], allowed) -> tuple[bool, str | None]:
    distinct = set(letters)
    if len(distinct) == 1:
        return True, _decide(distinct.pop(), allowed)
    return False, None


def _bold(text: str, allowed) -> tuple[bool, str | None]:
    found = []
    for span in _BOLD.findall(text):
        match = _BOLD_LETTER.match(span.strip())
        if match and (match.group(1).isupper() or span.strip()[:1] in "([" or span.lower().startswith(("option", "choice"))):
            found.append(match.group(1).upper())
    return _unique(found, allowed)


def _last_line_option(text: str, options) -> tuple[bool, str | None]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return False, None
    line = re.sub(r"^\s*(?:final\s+)?answer\s*:\s*", "", lines[-1], flags=re.IGNORECASE)
    letter = _option_text_match(normalise_wrappers(line), options)
    return (True, letter) if letter else (False, None)


def extract_answer(
    text: str,
    letters: Sequence[str],
    mode: Mode = "strict",
    options: Mapping[str, str] | None = None,
) -> str | None:
    """The option letter the completion chose, one of ``letters`` (upper case), or None.

    ``letters`` are the question's own option letters (a string "ABCD" or a sequence); ``options``
    (letter -> text) lets a statement like "The answer is B Hypertension" count and, in lenient mode,
    lets an option's exact text count as its letter. See the module docstring for the rules.
    """
    if mode not in ("strict", "lenient"):
        raise ValueError(f"mode must be 'strict' or 'lenient', not {mode!r}")
    allowed = _letter_set(letters)
    if options is not None:
        options = {str(k).upper(): str(v) for k, v in options.items()}
    text = text or ""
    found, letter, statement_phrases = _strict(text, allowed, options)
    if found or mode == "strict":
        return letter
    for decide in (
        lambda: _boxed(text, allowed, options),
        lambda: _markers(text, allowed, options, statement_phrases),
        lambda: _bare(text, allowed, options),
        lambda: _last_line_option(text, options),
    ):
        found, letter = decide()
        if found:
            return letter
    if _looks_unfinished(text):
        return None
    for decide in (
        lambda: _bold(text, allowed),
        lambda: _unique([m.upper() for m in _PAREN_LETTER.findall(text)], allowed),
    ):
        found, letter = decide()
        if found:
            return letter
    return None


def completion_text(completion: Any) -> str:
    """The text of one completion: strings pass through; TRL chat completions are lists of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    parts = []
    for message in completion or []:
        if isinstance(message, str):
            parts.append(message)
            continue
        if message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content") or ""
        if isinstance(content, list):  # multimodal-style content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
        parts.append(str(content))
    return "\n".join(parts)


def _letters_of(value: Any) -> Sequence[str]:
    if isinstance(value, str):
        return [c for c in value if c.strip() and c not in ",;"]
    return list(value)


def correctness_reward(
    completions: Sequence[Any], target: Sequence[str | None], letters: Sequence[Any], mode: Mode = "strict", **kwargs
) -> list[float]:
    """1.0 where the extracted answer equals the target letter, else 0.0 (TRL reward function).

    ``target`` (the pseudo-label in stage 1, the gold letter in stage 2) and ``letters`` (the question's
    own letters, e.g. "ABCD") are dataset columns, one value per completion. Strict by default: the
    reward then pays only for the final-answer format that evaluation's strict accuracy reads, and
    never for weak evidence such as a lone "(B)" in unfinished reasoning. Use
    ``functools.partial(correctness_reward, mode="lenient")`` to pay for any lenient answer.
    """
    rewards = []
    for completion, gold, own_letters in zip(completions, target, letters, strict=True):
        answer = extract_answer(completion_text(completion), _letters_of(own_letters), mode=mode)
        rewards.append(1.0 if gold is not None and answer == str(gold).strip().upper() else 0.0)
    return rewards


_LEADING_CHOICE = re.compile(r"\s*(?:\*\*)?[(\[]?([A-J])[)\].:]")
"""A completion that opens with a choice: "C. Mitochondrial", "(B) ...", "**A:** ..."."""


def names_a_choice(text: str, letters: Sequence[str]) -> bool:
    """Whether a completion names one of the question's letters as its answer in some form: a lenient answer
    ("Answer: B", a bold letter, the option's text) or an opening choice ("C. Mitochondrial")."""
    allowed = _letter_set(letters)
    if extract_answer(text, allowed, mode="lenient"):
        return True
    match = _LEADING_CHOICE.match(text or "")
    return bool(match) and match.group(1) in allowed


def format_reward(completions: Sequence[Any], letters: Sequence[Any], partial_credit: float = 0.0, **kwargs) -> list[float]:
    """1.0 where a strict final statement names one of the question's own letters; ``partial_credit`` where
    there is none but the completion names a choice otherwise (:func:`names_a_choice`); else 0.0.

    The trainer weights it (small) beside correctness; it teaches the format, not the answer. Partial credit
    pays a policy that seldom states "The answer is X" for coming closer, so a group of its completions
    differs in reward more often (GRPO learns only from groups whose rewards differ).
    """
    rewards = []
    for completion, own_letters in zip(completions, letters, strict=True):
        text, allowed = completion_text(completion), _letters_of(own_letters)
        if extract_answer(text, allowed, mode="strict"):
            rewards.append(1.0)
        else:
            rewards.append(partial_credit if partial_credit and names_a_choice(text, allowed) else 0.0)
    return rewards


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over sampled answers."""

    label: str | None = field(metadata={"help": "The winning letter; None on a tie or with no parsed answer."})
    agreement: float = field(metadata={"help": "Share of the top letter among parsed answers (0 with none)."})
    votes: dict[str, int] = field(metadata={"help": "Parsed answers per letter."})
    parsed: int = field(metadata={"help": "How many answers were parsed (not None)."})


def majority_vote(answers: Sequence[str | None]) -> Vote:
    """Majority vote over extracted answers (None = unparsed, not a vote). Ties give label None."""
    counts = Counter(answer for answer in answers if answer is not None)
    parsed = sum(counts.values())
    if not parsed:
        return Vote(label=None, agreement=0.0, votes={}, parsed=0)
    ranked = counts.most_common()
    top = ranked[0][1]
    label = ranked[0][0] if len(ranked) == 1 or ranked[1][1] < top else None
    return Vote(label=label, agreement=top / parsed, votes=dict(sorted(counts.items())), parsed=parsed)


def option_orders(letters: Sequence[str], n: int, seed: int, key: str) -> list[tuple[str, ...]]:
    """The option order each of ``n`` samples of one question sees, seeded by ``seed`` and the question's ``key``.

    Each order lists the question's own letters in the order they are shown (shown letter ``letters[i]`` is
    original option ``order[i]``). Orders are the cyclic shifts of a seeded shuffle, so within each run of k
    samples (k options) every option is shown at every position once; further runs use new shuffles, and no
    order repeats while there are unused ones. A vote over these samples cannot prefer a position.
    """
    import math
    import random

    letters = tuple(_letter_set(letters))
    rng = random.Random(f"{seed}:{key}")
    orders: list[tuple[str, ...]] = []
    while len(orders) < n:
        base = tuple(rng.sample(letters, len(letters)))
        for shift in range(len(letters)):
            order = base[shift:] + base[:shift]
            if order not in orders or len(set(orders)) >= math.factorial(len(letters)):
                orders.append(order)
            if len(orders) == n:
                break
    return orders


def shown_options(options: Mapping[str, str], order: Sequence[str]) -> dict[str, str]:
    """The options as a sample with ``order`` sees them: the question's letters, in order, each with the text of
    the original option the order puts there."""
    return {letter: options[original] for letter, original in zip(options, order, strict=True)}


def original_letter(shown: str | None, letters: Sequence[str], order: Sequence[str]) -> str | None:
    """The question's own letter of the option a sample with ``order`` chose as ``shown`` (None stays None)."""
    if shown is None:
        return None
    return order[list(_letter_set(letters)).index(shown)]
