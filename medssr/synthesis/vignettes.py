"""Knowledge-grounded question builders: one per question type, each rendering a clinical vignette with
lettered options whose key comes from the knowledge base, plus the evidence it was built from.

Every builder returns a :class:`Draft` or raises :class:`Unbuildable` (with a reason counted in the
stats); the caller retries with another disease. Correctness rests on the knowledge base: the answer
is annotated to the disease, and every distractor contradicts at least one shown fact.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from medssr.knowledge.base import KnowledgeBase, normalise_name
from medssr.knowledge.similarity import DiseaseSimilarity

EXPECTED_FREQUENCY = 0.3  # a finding seen in at least ~30% of patients (or of unknown frequency) is "expected"
GENERIC_SHARE = 0.02  # findings annotated to more of the pool than this are too unspecific to be "not expected"
DISTINGUISHING_SHARE = 0.05  # ... or to be the feature that tells two diseases apart
MALE_TERMS = ("HP:0010461",)  # Abnormality of the male genitalia
FEMALE_TERMS = ("HP:0010460", "HP:0000140")  # female genitalia, menstrual cycle

INHERITANCE_OPTIONS = {
    "HP:0000006": "Autosomal dominant",
    "HP:0000007": "Autosomal recessive",
    "HP:0001419": "X-linked recessive",
    "HP:0001423": "X-linked dominant",
    "HP:0001427": "Mitochondrial",
}
# The mode most easily mistaken for each (kept among the options of hard items).
INHERITANCE_NEAR_MISS = {
    "HP:0000006": "HP:0001423",
    "HP:0000007": "HP:0001419",
    "HP:0001419": "HP:0000007",
    "HP:0001423": "HP:0000006",
    "HP:0001427": "HP:0000006",
}
FAMILY_HISTORY = {
    "HP:0000006": "{Pos} mother and maternal grandfather have similar features; a brother is unaffected.",
    "HP:0000007": "{Pos} parents are healthy first cousins, and an older sister has the same condition.",
    "HP:0001419": "{Pos} parents are healthy; two maternal uncles had a similar illness.",
    "HP:0001423": "{Pos} father is affected; all of his daughters and none of his sons share the condition.",
    "HP:0001427": "{Pos} mother has a milder form; her siblings of both sexes are affected, and no affected man has passed it on.",
}

# onset term -> (current age range in years, sentence dating the onset). Early-onset conditions are
# seen as children, since findings such as delayed speech only show later; the onset is then stated.
ONSET_AGES = {
    "HP:0030674": (1, 8, "The first anomalies were noted before birth."),
    "HP:0003577": (1, 8, "The first signs were present at birth."),
    "HP:0003623": (1, 8, "Symptoms began in the neonatal period."),
    "HP:0003593": (1, 10, "Symptoms began in infancy."),
    "HP:0011463": (3, 12, None),
    "HP:0003621": (10, 17, None),
    "HP:0011462": (18, 35, None),
    "HP:0003581": (20, 60, None),
    "HP:0003596": (40, 60, None),
    "HP:0003584": (60, 80, None),
}


class Unbuildable(Exception):
    """This disease cannot give this kind of item (the reason is counted)."""


@dataclass
class Draft:
    """A built question before lettering: option texts with the index of the key."""

    stem: str
    options: list[str]
    answer: int
    evidence: dict
    disease_ids: list[str]
    forbidden: list[str] = field(default_factory=list)  # strings the stem must not contain


def finding_text(name: str) -> str:
    """'Global developmental delay' -> 'global developmental delay'; keeps acronyms ('EEG abnormality')."""
    first = name.split(" ", 1)[0]
    return name if len(first) > 1 and first[1].isupper() else name[:1].lower() + name[1:]


def join_list(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def leaks(stem: str, text: str) -> bool:
    """Whether ``text`` appears in ``stem`` as whole words, ignoring case and punctuation, or, for text of
    several words, whether all its words do in any order ('Congenital giant melanocytic nevus' leaks
    from 'Large/giant congenital melanocytic nevus')."""
    needle = normalise_name(text)
    if not needle:
        return False
    haystack = normalise_name(stem)
    if f" {needle} " in f" {haystack} ":
        return True
    words = set(needle.split()) - _STOPWORDS
    return len(words) >= 2 and words <= set(haystack.split())


_STOPWORDS = {"of", "the", "a", "an", "and", "or", "in", "to", "with", "due", "type", "abnormal", "abnormality"}


class VignetteBuilder:
    """Builds knowledge items from diseases of a pool (distractors come from ``distractor_pool``)."""

    def __init__(
        self,
        kb: KnowledgeBase,
        distractor_pool: list[str],
        findings_shown: dict[str, int],
        options_per_item: int,
        with_ancestors: bool = False,
    ):
        self.kb = kb
        self.pool = sorted(distractor_pool)
        self.similarity = DiseaseSimilarity(kb, self.pool, with_ancestors=with_ancestors)
        self.findings_shown = findings_shown
        self.n_options = options_per_item
        self._expected: dict[str, list[str]] = {}
        self._near: dict[str, frozenset[str]] = {}
        self._informative: dict[str, bool] = {}
        self._normalised: dict[str, tuple[str, frozenset[str]]] = {}
        self._branches: dict[str, frozenset[str]] = {}
        self._consistent: dict[tuple[str, str], bool] = {}
        self._top_level = frozenset(kb.ontology.top_level_branches())
        counts = Counter(t for d in self.pool for t in kb.diseases[d].phenotypes)
        self.prevalence = {t: c / len(self.pool) for t, c in counts.items()}
        self._genes_to_diseases: dict[str, list[str]] = {}
        for disease_id in self.pool:
            for gene in kb.diseases[disease_id].genes:
                self._genes_to_diseases.setdefault(gene, []).append(disease_id)
        self.gene_pool = sorted(self._genes_to_diseases)
        self.builders = {
            "diagnosis": self.diagnosis,
            "causal_gene": self.causal_gene,
            "inheritance": self.inheritance,
            "not_expected": self.not_expected,
            "distinguishing": self.distinguishing,
        }

    # ---- which diseases can give which type
    def supports(self, disease_id: str, question_type: str) -> bool:
        disease = self.kb.diseases[disease_id]
        if question_type == "causal_gene":
            return len(disease.genes) == 1
        if question_type == "inheritance":
            return len(disease.inheritance) == 1 and disease.inheritance[0] in INHERITANCE_OPTIONS
        return len(self.expected_findings(disease_id)) >= max(3, self.n_options - 1)

    # ---- knowledge helpers
    def informative(self, term: str) -> bool:
        """Specific enough to be a finding (not a heading like 'Abnormality of the eye' or 'Abnormality
        of cytokine secretion')."""
        cached = self._informative.get(term)
        if cached is None:
            cached = self._informative[term] = (
                self.kb.ontology.depth(term) >= 4 and not self.kb.term_name(term).startswith("Abnormality of")
            )
        return cached

    def expected_findings(self, disease_id: str) -> list[str]:
        """Informative findings seen in at least ~30% of patients (or of unknown frequency), in file order;
        findings whose name overlaps the disease name are left out (they would give the answer away)."""
        cached = self._expected.get(disease_id)
        if cached is None:
            disease = self.kb.diseases[disease_id]
            cached = self._expected[disease_id] = [
                t for t, f in disease.phenotypes.items()
                if (f is None or f >= EXPECTED_FREQUENCY) and self.informative(t)
                and not self.names_overlap(t, disease.name)
            ]
        return cached

    def near_ancestors(self, term: str) -> frozenset[str]:
        """Parents and grandparents of a term."""
        cached = self._near.get(term)
        if cached is None:
            parents = set(self.kb.ontology.parents.get(term, ()))
            for parent in list(parents):
                parents.update(self.kb.ontology.parents.get(parent, ()))
            cached = self._near[term] = frozenset(parents)
        return cached

    def branches(self, term: str) -> frozenset[str]:
        """The organ-system branches (children of 'Phenotypic abnormality') a term falls under."""
        cached = self._branches.get(term)
        if cached is None:
            cached = self._branches[term] = self.kb.ontology.ancestors(term) & self._top_level
        return cached

    def disease_branches(self, disease_id: str) -> frozenset[str]:
        found: set[str] = set()
        for term in self.kb.diseases[disease_id].phenotypes:
            found |= self.branches(term)
        return frozenset(found)

    def _name_words(self, text: str) -> tuple[str, frozenset[str]]:
        cached = self._normalised.get(text)
        if cached is None:
            normal = normalise_name(text)
            cached = self._normalised[text] = (f" {normal} ", frozenset(normal.split()) - _STOPWORDS)
        return cached

    def names_overlap(self, term: str, disease_name: str) -> bool:
        """``leaks`` in both directions between a finding's name and a disease name, with cached parts."""
        term_text, term_words = self._name_words(self.kb.term_name(term))
        name_text, name_words = self._name_words(disease_name)
        return (
            term_text in name_text or name_text in term_text
            or (len(term_words) >= 2 and term_words <= name_words)
            or (len(name_words) >= 2 and name_words <= term_words)
        )

    def consistent(self, term: str, disease_id: str) -> bool:
        """Whether a finding fits a disease: it (or a more specific term) is annotated, or a parent or
        grandparent of it is."""
        key = (term, disease_id)
        cached = self._consistent.get(key)
        if cached is None:
            cached = self._consistent[key] = term in self.kb.expanded_terms(disease_id) or not self.near_ancestors(
                term
            ).isdisjoint(self.kb.diseases[disease_id].phenotypes)
        return cached

    def related(self, first: str, second: str) -> bool:
        ancestors = self.kb.ontology.ancestors
        return first in ancestors(second) or second in ancestors(first)

    def candidates(self, disease_id: str, difficulty: str, rng: random.Random, exclude: set[str] = frozenset()) -> list[str]:
        """Distractor diseases in preference order: near misses for hard items, moderately similar for
        medium, random dissimilar diseases for easy."""
        ranked = [d for d, _ in self.similarity.neighbours(disease_id) if d not in exclude]
        if difficulty == "hard":
            head = ranked[:10]
            rng.shuffle(head)
            return head + ranked[10:30]
        if difficulty == "medium":
            band = ranked[10:60]
            rng.shuffle(band)
            return band + ranked[:10]
        near = set(ranked[:60]) | {disease_id} | exclude
        group = self.kb.diseases[disease_id].group
        picks = []
        for _ in range(60):
            other = self.pool[rng.randrange(len(self.pool))]
            if other not in near and self.kb.diseases[other].group != group and other not in picks:
                picks.append(other)
        return picks

    # ---- patient description
    def patient(self, disease_id: str, rng: random.Random, shown: list[str], sex: str | None = None) -> dict:
        disease = self.kb.diseases[disease_id]
        onsets = [o for o in disease.onset if self._onset_key(o)]
        onset = self._onset_key(rng.choice(onsets)) if onsets else None
        if sex is None:
            ancestors = set()
            for term in shown:
                ancestors |= self.kb.ontology.ancestors(term)
            if ancestors & set(MALE_TERMS):
                sex = "male"
            elif ancestors & set(FEMALE_TERMS):
                sex = "female"
            else:
                sex = rng.choice(("male", "female"))
        if onset is None:
            age, since, phrase = None, None, "A patient"
        else:
            low, high, since = ONSET_AGES[onset]
            age = rng.randint(low, high)
            noun = ("man" if age >= 18 else "boy") if sex == "male" else ("woman" if age >= 18 else "girl")
            article = "An" if str(age).startswith("8") or age in (11, 18) else "A"
            phrase = f"{article} {age}-year-old {noun}"
        pronoun = "He" if sex == "male" else "She"
        return {
            "phrase": phrase,
            "since": f" {since}" if since else "",
            "sex": sex,
            "age": age,
            "onset": onset,
            "Pron": pronoun if age is not None else "The patient",
            "Pos": ("His" if sex == "male" else "Her") if age is not None else "The patient's",
        }

    def _onset_key(self, term: str) -> str | None:
        for candidate in sorted(self.kb.ontology.ancestors(term), key=lambda t: (t != term, t)):
            if candidate in ONSET_AGES:
                return candidate
        return None

    def finding_records(self, disease_id: str, terms: list[str]) -> list[dict]:
        phenotypes = self.kb.diseases[disease_id].phenotypes
        return [{"id": t, "name": self.kb.term_name(t), "frequency": phenotypes.get(t)} for t in terms]

    def pick_findings(self, disease_id: str, count: int, rng: random.Random, distractors: list[str]) -> list[str] | None:
        """Up to ``count`` findings of the disease such that every distractor contradicts at least one of
        them (greedy cover), then filled at random; None when the distractors cannot all be ruled out."""
        terms = list(self.expected_findings(disease_id))
        rng.shuffle(terms)
        chosen: list[str] = []
        for distractor in distractors:
            if any(not self.consistent(t, distractor) for t in chosen):
                continue
            options = [t for t in terms if t not in chosen and not self.consistent(t, distractor)
                       and not any(self.related(t, c) for c in chosen)]
            if not options or len(chosen) >= count:
                return None
            # prefer the finding that also rules out most other distractors
            best = max(options, key=lambda t: sum(not self.consistent(t, d) for d in distractors))
            chosen.append(best)
        for term in terms:
            if len(chosen) >= count:
                break
            if term not in chosen and not any(self.related(term, c) for c in chosen):
                chosen.append(term)
        return chosen

    def choose_distractor_diseases(
        self, disease_id: str, difficulty: str, rng: random.Random, count: int, findings: int
    ) -> tuple[list[str], list[str]]:
        """``count`` distractor diseases and the findings that rule each of them out."""
        names = {normalise_name(self.kb.diseases[disease_id].name)}
        expected = self.expected_findings(disease_id)
        chosen: list[str] = []
        shown: list[str] = []
        for other in self.candidates(disease_id, difficulty, rng):
            if len(chosen) == count:
                break
            name = normalise_name(self.kb.diseases[other].name)
            # a subtype or parent entry ("Leigh syndrome" vs "Mitochondrial DNA-associated Leigh syndrome")
            # would make two options defensible
            if any(f" {name} " in f" {n} " or f" {n} " in f" {name} " for n in names):
                continue
            if not any(not self.consistent(t, other) for t in expected):
                continue  # the disease's findings cannot rule this one out
            attempt = self.pick_findings(disease_id, findings, random.Random(rng.random()), chosen + [other])
            if attempt is None:
                continue
            chosen.append(other)
            names.add(name)
            shown = attempt
        if len(chosen) < count:
            raise Unbuildable("too_few_distractors")
        return chosen, shown

    # ---- question types
    def diagnosis(self, disease_id: str, difficulty: str, rng: random.Random) -> Draft:
        disease = self.kb.diseases[disease_id]
        k = self.findings_shown[difficulty]
        distractors, shown = self.choose_distractor_diseases(disease_id, difficulty, rng, self.n_options - 1, k)
        rng.shuffle(shown)
        who = self.patient(disease_id, rng, shown)
        texts = [finding_text(self.kb.term_name(t)) for t in shown]
        opener = rng.choice((
            "{p} is brought for evaluation of {f0}.",
            "{p} presents with {f0}.",
            "{p} is referred to a genetics clinic because of {f0}.",
            "{p} is evaluated for {f0}.",
        ))
        stem = opener.format(p=who["phrase"], f0=texts[0]) + who["since"]
        if len(texts) > 1:
            stem += " " + rng.choice((
                "Examination and work-up show {rest}.",
                "Further evaluation reveals {rest}.",
                "{Pron} is also found to have {rest}.",
            )).format(rest=join_list(texts[1:]), Pron=who["Pron"])
        stem += " " + rng.choice((
            "Which of the following is the most likely diagnosis?",
            "What is the most likely diagnosis?",
            "Which condition best explains these findings?",
        ))
        options = [disease.name] + [self.kb.diseases[d].name for d in distractors]
        evidence = {
            "findings": self.finding_records(disease_id, shown),
            "answer_disease": disease_id,
            "distractor_diseases": distractors,
            "onset": who["onset"],
        }
        return self._draft(stem, options, rng, evidence, [disease_id, *distractors], [disease.name])

    def causal_gene(self, disease_id: str, difficulty: str, rng: random.Random) -> Draft:
        disease = self.kb.diseases[disease_id]
        if len(disease.genes) != 1:
            raise Unbuildable("no_single_gene")
        gene = disease.genes[0]
        count = self.n_options - 1
        if difficulty == "easy":
            shown = self.pick_findings(disease_id, 2, rng, []) or []
            others = [g for g in self.gene_pool if g != gene]
            genes = rng.sample(others, count)
            distractors: list[str] = []
        else:
            taken = {gene}

            def single_new_gene(other: str) -> bool:
                genes_of = self.kb.diseases[other].genes
                return len(genes_of) == 1 and genes_of[0] not in taken

            distractors, shown = [], []
            picked: list[str] = []
            for other in self.candidates(disease_id, difficulty, rng):
                if len(picked) == count:
                    break
                if not single_new_gene(other):
                    continue
                other_gene = self.kb.diseases[other].genes[0]
                # every disease of the distractor gene must be ruled out by the shown findings
                rivals = [d for d in self._genes_to_diseases[other_gene] if d != disease_id]
                attempt = self.pick_findings(disease_id, self.findings_shown[difficulty], random.Random(rng.random()),
                                             distractors + rivals)
                if attempt is None:
                    continue
                distractors += rivals
                picked.append(other_gene)
                taken.add(other_gene)
                shown = attempt
            if len(picked) < count:
                raise Unbuildable("too_few_distractors")
            genes = picked
        rng.shuffle(shown)
        who = self.patient(disease_id, rng, shown)
        texts = [finding_text(self.kb.term_name(t)) for t in shown]
        if difficulty == "easy":
            stem = f"{who['phrase']} is diagnosed with {disease.name}"
            stem += f", with {join_list(texts)}." if texts else "."
            stem += " " + rng.choice((
                "Pathogenic variants in which gene cause this condition?",
                "Which gene is most likely to carry the causative variant?",
            ))
        else:
            stem = f"{who['phrase']} has {join_list(texts)}.{who['since']} " + rng.choice((
                "Genetic testing is planned. Pathogenic variants in which gene best explain this presentation?",
                "Which gene is most likely to carry the causative variant?",
                "Sequencing of which gene is most likely to reveal the cause?",
            ))
        evidence = {
            "findings": self.finding_records(disease_id, shown),
            "answer_disease": disease_id,
            "answer_gene": gene,
            "distractor_genes": genes,
            "distractor_diseases": sorted(set(distractors)),
            "onset": who["onset"],
        }
        return self._draft(stem, [gene, *genes], rng, evidence, [disease_id, *sorted(set(distractors))], [gene])

    def inheritance(self, disease_id: str, difficulty: str, rng: random.Random) -> Draft:
        disease = self.kb.diseases[disease_id]
        if len(disease.inheritance) != 1 or disease.inheritance[0] not in INHERITANCE_OPTIONS:
            raise Unbuildable("no_single_inheritance")
        mode = disease.inheritance[0]
        others = sorted(m for m in INHERITANCE_OPTIONS if m != mode)
        rng.shuffle(others)
        if difficulty == "hard":
            others.remove(INHERITANCE_NEAR_MISS[mode])
            others.insert(0, INHERITANCE_NEAR_MISS[mode])
        others = others[: self.n_options - 1]
        k = min(self.findings_shown[difficulty], 3)
        shown = self.pick_findings(disease_id, k, rng, []) or []
        sex = {"HP:0001419": "male", "HP:0001423": "female"}.get(mode)
        who = self.patient(disease_id, rng, shown, sex=sex)
        texts = [finding_text(self.kb.term_name(t)) for t in shown]
        stem = f"{who['phrase']} is diagnosed with {disease.name}"
        stem += f" after presenting with {join_list(texts)}." if texts else "."
        if difficulty == "easy":
            stem += " " + FAMILY_HISTORY[mode].format(Pos=who["Pos"])
        stem += " " + rng.choice((
            "What is the mode of inheritance of this condition?",
            "How is this condition inherited?",
            "Which inheritance pattern does this condition follow?",
        ))
        options = [INHERITANCE_OPTIONS[mode]] + [INHERITANCE_OPTIONS[m] for m in others]
        evidence = {
            "findings": self.finding_records(disease_id, shown),
            "answer_disease": disease_id,
            "inheritance": {"id": mode, "name": self.kb.term_name(mode)},
            "family_history": difficulty == "easy",
            "onset": who["onset"],
        }
        forbidden = options + ["dominant", "recessive", "x linked", "mitochondrial", "autosomal"]
        return self._draft(stem, options, rng, evidence, [disease_id], forbidden)

    def not_expected(self, disease_id: str, difficulty: str, rng: random.Random) -> Draft:
        disease = self.kb.diseases[disease_id]
        expected = self.expected_findings(disease_id)
        frequent = [t for t in expected if (disease.phenotypes[t] or 0) >= 0.5] or expected
        if len(frequent) < self.n_options - 1:
            frequent = expected
        if len(frequent) < self.n_options - 1:
            raise Unbuildable("too_few_findings")
        true_terms = []
        for term in rng.sample(frequent, len(frequent)):
            if not any(self.related(term, t) for t in true_terms):
                true_terms.append(term)
            if len(true_terms) == self.n_options - 1:
                break
        if len(true_terms) < self.n_options - 1:
            raise Unbuildable("too_few_findings")
        pool: list[str] = []
        source = None
        if difficulty == "hard":
            pool = [t for t in disease.excluded if self.informative(t)]
            source = "excluded" if pool else None
        if not pool:
            # A finding merely not annotated may still occur (annotations are incomplete), so borrowed
            # findings must lie in organ systems the disease has no annotation in at all.
            # Nonspecific findings (fever, failure to thrive) are left unannotated too often to be
            # called unexpected, so only findings annotated to few diseases qualify.
            involved = self.disease_branches(disease_id)
            for other in self.candidates(disease_id, difficulty, rng)[:10]:
                pool += [
                    t for t in self.expected_findings(other)
                    if t not in pool and self.branches(t).isdisjoint(involved) and self.prevalence[t] <= GENERIC_SHARE
                ]
            source = "other_diseases"
        rng.shuffle(pool)
        answer = next(
            (t for t in pool if not self.consistent(t, disease_id) and not any(self.related(t, s) for s in true_terms)
             and self.informative(t)),
            None,
        )
        if answer is None:
            raise Unbuildable("no_unexpected_finding")
        stem = rng.choice((
            "Which of the following findings is NOT typically associated with {name}?",
            "A patient has been diagnosed with {name}. Which of the following features would be LEAST expected?",
            "Each of the following is a recognised feature of {name} EXCEPT:",
        )).format(name=disease.name)
        options = [finding_text(self.kb.term_name(answer))] + [finding_text(self.kb.term_name(t)) for t in true_terms]
        options = [o[:1].upper() + o[1:] for o in options]
        evidence = {
            "answer_finding": {"id": answer, "name": self.kb.term_name(answer), "source": source},
            "expected_findings": self.finding_records(disease_id, true_terms),
            "answer_disease": disease_id,
        }
        return self._draft(stem, options, rng, evidence, [disease_id], [options[0]])

    def distinguishing(self, disease_id: str, difficulty: str, rng: random.Random) -> Draft:
        first = self.kb.diseases[disease_id]
        band = {"hard": (0, 5), "medium": (5, 30), "easy": (30, 100)}[difficulty]
        ranked = [d for d, _ in self.similarity.neighbours(disease_id)]
        rivals = ranked[band[0]: band[1]] or ranked[:5]
        rng.shuffle(rivals)
        for rival_id in rivals:
            rival = self.kb.diseases[rival_id]
            if normalise_name(rival.name) == normalise_name(first.name) or leaks(first.name, rival.name) or leaks(rival.name, first.name):
                continue
            # the key must be characteristic, not a nonspecific finding the rival's annotation merely lacks
            own = [t for t in self.expected_findings(disease_id)
                   if not self.consistent(t, rival_id) and self.prevalence.get(t, 0) <= DISTINGUISHING_SHARE]
            theirs = [t for t in self.expected_findings(rival_id) if not self.consistent(t, disease_id)]
            shared = [t for t in self.expected_findings(disease_id) if self.consistent(t, rival_id)]
            if not own or len(theirs) + len(shared) < self.n_options - 1:
                continue
            answer = rng.choice(own)
            rng.shuffle(theirs)
            rng.shuffle(shared)
            picked: list[str] = []
            # hard items lean on shared findings (they look right for both); easy ones on the rival's own
            order = (shared + theirs) if difficulty == "hard" else (theirs + shared)
            for term in order:
                if term != answer and not self.related(term, answer) and not any(self.related(term, p) for p in picked):
                    picked.append(term)
                if len(picked) == self.n_options - 1:
                    break
            if len(picked) < self.n_options - 1:
                continue
            stem = rng.choice((
                "The differential diagnosis for a patient includes {a} and {b}. Which of the following findings most favours {a}?",
                "A clinician must distinguish {a} from {b}. Which finding, if present, points to {a} rather than {b}?",
                "Which of the following features is characteristic of {a} but not of {b}?",
            )).format(a=first.name, b=rival.name)
            options = [finding_text(self.kb.term_name(t)) for t in [answer, *picked]]
            options = [o[:1].upper() + o[1:] for o in options]
            evidence = {
                "answer_finding": {"id": answer, "name": self.kb.term_name(answer)},
                "distractor_findings": [
                    {"id": t, "name": self.kb.term_name(t), "in": "both" if t in shared else "rival"} for t in picked
                ],
                "answer_disease": disease_id,
                "rival_disease": rival_id,
            }
            return self._draft(stem, options, rng, evidence, [disease_id, rival_id], [options[0]])
        raise Unbuildable("no_distinguishing_pair")

    # ---- lettering and checks
    def _draft(self, stem: str, options: list[str], rng: random.Random, evidence: dict, disease_ids: list[str],
               forbidden: list[str]) -> Draft:
        order = list(range(len(options)))
        rng.shuffle(order)
        shuffled = [options[i] for i in order]
        return Draft(stem, shuffled, order.index(0), evidence, disease_ids, forbidden)


def check_draft(draft: Draft) -> str | None:
    """Why a draft is unusable, or None: duplicate options, or the key leaked into the stem."""
    normalised = [normalise_name(o) for o in draft.options]
    if len(set(normalised)) != len(normalised) or not all(normalised):
        return "duplicate_options"
    if not 0 <= draft.answer < len(draft.options):
        return "answer_not_in_options"
    for text in draft.forbidden:
        if leaks(draft.stem, text):
            return "answer_leak"
    return None
