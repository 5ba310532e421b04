"""Phenotype-set similarity between diseases (Jaccard on HPO terms, optionally with ancestors)."""

from __future__ import annotations

import numpy as np

from medssr.knowledge.base import KnowledgeBase


class DiseaseSimilarity:
    """Nearest diseases within a candidate pool, by Jaccard similarity of their phenotype sets.

    Intersections with every pool disease come from one ``bincount`` over the inverted index's postings
    of the query's terms, so a lookup costs microseconds per shared annotation; results are cached.
    """

    def __init__(self, kb: KnowledgeBase, pool: list[str], with_ancestors: bool = False, keep: int = 100):
        self.kb = kb
        self.keep = keep
        self.pool = sorted(pool)
        self.with_ancestors = with_ancestors
        self._position = {d: i for i, d in enumerate(self.pool)}
        postings: dict[str, list[int]] = {}
        sizes = np.zeros(len(self.pool), dtype=np.int64)
        for position, disease_id in enumerate(self.pool):
            terms = self.terms(disease_id)
            sizes[position] = len(terms)
            for term in terms:
                postings.setdefault(term, []).append(position)
        self._postings = {t: np.asarray(p, dtype=np.int64) for t, p in postings.items()}
        self._sizes = sizes
        self._groups = [kb.diseases[d].group for d in self.pool]
        self._cache: dict[str, list[tuple[str, float]]] = {}

    def terms(self, disease_id: str) -> frozenset[str]:
        if self.with_ancestors:
            return self.kb.expanded_terms(disease_id)
        return frozenset(self.kb.diseases[disease_id].phenotypes)

    def jaccard(self, first: str, second: str) -> float:
        a, b = self.terms(first), self.terms(second)
        union = len(a | b)
        return len(a & b) / union if union else 0.0

    def neighbours(self, disease_id: str) -> list[tuple[str, float]]:
        """The ``keep`` pool diseases most similar to ``disease_id`` (sharing at least one term), most
        similar first (ties by id); the disease itself and other entries of its group (the same condition
        under another id) are left out."""
        cached = self._cache.get(disease_id)
        if cached is not None:
            return cached
        own = self.terms(disease_id)
        arrays = [self._postings[t] for t in own if t in self._postings]
        if not arrays:
            self._cache[disease_id] = []
            return []
        shared = np.bincount(np.concatenate(arrays), minlength=len(self.pool))
        candidates = np.nonzero(shared)[0]
        scores = shared[candidates] / (self._sizes[candidates] + len(own) - shared[candidates])
        if len(candidates) > self.keep + 8:
            # everything scoring at least the (keep+8)-th best value, so ties at the cut stay complete
            threshold = np.partition(scores, len(scores) - self.keep - 8)[len(scores) - self.keep - 8]
            chosen = scores >= threshold
            candidates, scores = candidates[chosen], scores[chosen]
        # a few spare places for the same-group entries dropped below
        order = candidates[np.lexsort((candidates, -scores))][: self.keep + 16]
        score_of = dict(zip(candidates.tolist(), scores.tolist()))
        group = self.kb.diseases[disease_id].group
        ranked = [
            (self.pool[i], score_of[i])
            for i in order.tolist()
            if self.pool[i] != disease_id and self._groups[i] != group
        ][: self.keep]
        self._cache[disease_id] = ranked
        return ranked
