"""The HPO ontology (``hp.obo``) as plain dictionaries: names, parents, ancestors, top-level branches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PHENOTYPIC_ABNORMALITY = "HP:0000118"
ONSET_ROOT = "HP:0003674"
INHERITANCE_ROOT = "HP:0000005"


@dataclass
class Ontology:
    """Term names and is_a parents of every non-obsolete HPO term, with obsolete ids mapped to replacements."""

    names: dict[str, str]
    parents: dict[str, tuple[str, ...]]
    replaced_by: dict[str, str] = field(default_factory=dict)
    _ancestors: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)
    _depth: dict[str, int] = field(default_factory=dict, repr=False)

    def resolve(self, term_id: str) -> str | None:
        """The current id of a term (following ``replaced_by``), or None when it is unknown or retired."""
        seen = 0
        while term_id not in self.names and term_id in self.replaced_by and seen < 5:
            term_id, seen = self.replaced_by[term_id], seen + 1
        return term_id if term_id in self.names else None

    def ancestors(self, term_id: str) -> frozenset[str]:
        """All is_a ancestors of a term, the term itself included."""
        cached = self._ancestors.get(term_id)
        if cached is not None:
            return cached
        found = {term_id}
        for parent in self.parents.get(term_id, ()):
            found |= self.ancestors(parent)
        result = frozenset(found)
        self._ancestors[term_id] = result
        return result

    def children(self, term_id: str) -> list[str]:
        return sorted(t for t, ps in self.parents.items() if term_id in ps)

    def top_level_branches(self) -> list[str]:
        """The organ-system branches: direct children of 'Phenotypic abnormality' (HP:0000118)."""
        return self.children(PHENOTYPIC_ABNORMALITY)

    def depth(self, term_id: str) -> int:
        """Length of the longest is_a path from the term up to the root."""
        cached = self._depth.get(term_id)
        if cached is None:
            parents = self.parents.get(term_id, ())
            cached = self._depth[term_id] = 0 if not parents else 1 + max(self.depth(p) for p in parents)
        return cached


def parse_obo(path: str | Path) -> Ontology:
    """Read the [Term] stanzas of an OBO file (id, name, is_a, is_obsolete, replaced_by)."""
    names: dict[str, str] = {}
    parents: dict[str, tuple[str, ...]] = {}
    replaced_by: dict[str, str] = {}

    def flush(term: dict) -> None:
        if not term.get("id"):
            return
        if term.get("obsolete"):
            if term.get("replaced_by"):
                replaced_by[term["id"]] = term["replaced_by"]
            return
        names[term["id"]] = term.get("name", term["id"])
        parents[term["id"]] = tuple(term.get("is_a", ()))

    term: dict | None = None
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if line.startswith("["):
                if term is not None:
                    flush(term)
                term = {} if line == "[Term]" else None
                continue
            if term is None or ": " not in line:
                continue
            key, _, value = line.partition(": ")
            if key == "id":
                term["id"] = value
            elif key == "name":
                term["name"] = value
            elif key == "is_a":
                term.setdefault("is_a", []).append(value.split(" ! ")[0].strip())
            elif key == "is_obsolete" and value.strip() == "true":
                term["obsolete"] = True
            elif key == "replaced_by":
                term["replaced_by"] = value.strip()
    if term is not None:
        flush(term)
    return Ontology(names=names, parents=parents, replaced_by=replaced_by)
