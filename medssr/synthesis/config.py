"""The one typed configuration of a synthesis run (loadable from YAML)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medssr.generation.base import GeneratorConfig, SamplingParams

QUESTION_TYPES = ("diagnosis", "causal_gene", "inheritance", "not_expected", "distinguishing")
DIFFICULTIES = ("easy", "medium", "hard")
HELDOUT_FRACTION = 0.1


@dataclass
class SynthesisConfig:
    """What to synthesize and in which proportions. Same config and seed -> byte-identical output.

    As YAML (``medssr synthesize --config synth.yaml --out data/synth.jsonl``)::

        n: 2000
        rare_ratio: 0.7
        seed: 13
        seed_questions: data/seed_questions.jsonl
        category_weights: {nervous_system: 2, musculoskeletal_system: 1, eye: 1}
        question_types: {diagnosis: 2, causal_gene: 1, inheritance: 1, not_expected: 1, distinguishing: 1}
        difficulty: {easy: 1, medium: 2, hard: 2}
        options_per_item: 4
        decontaminate_against: [../shared/benchmarks/medssr-eval]
        rewrite: true
        generator: {backend: transformers, model: /models/qwen3-8b}
        rewrite_sampling: {temperature: 0.7, max_tokens: 512}
    """

    n: int = field(default=1000, metadata={"help": "Total number of items to write."})
    rare_ratio: float = field(
        default=0.5,
        metadata={
            "help": "alpha: share of knowledge-grounded rare-disease items; the rest (1 - alpha) are seed-based "
            "items from human-annotated questions."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for every random choice (sampling, options, ages, order)."})
    category_weights: dict[str, float] | None = field(
        default=None,
        metadata={
            "help": "Organ-system category -> weight for the knowledge items (keys are HPO top-level branches, "
            "e.g. nervous_system). Default: uniform over the categories with at least min_category_diseases "
            "training diseases."
        },
    )
    min_category_diseases: int = field(
        default=20, metadata={"help": "A category takes part in the default uniform mix only with this many diseases."}
    )
    question_types: dict[str, float] = field(
        default_factory=lambda: {t: 1.0 for t in QUESTION_TYPES},
        metadata={"help": f"Question type -> weight for the knowledge items; types: {', '.join(QUESTION_TYPES)}."},
    )
    difficulty: dict[str, float] = field(
        default_factory=lambda: {"easy": 1.0, "medium": 1.0, "hard": 1.0},
        metadata={"help": "easy/medium/hard -> weight. Harder items show fewer findings and near-miss distractors."},
    )
    findings_shown: dict[str, int] = field(
        default_factory=lambda: {"easy": 6, "medium": 4, "hard": 3},
        metadata={"help": "Findings shown in a vignette per difficulty."},
    )
    options_per_item: int = field(default=5, metadata={"help": "Options of a knowledge item: 4 or 5."})
    similarity_with_ancestors: bool = field(
        default=False,
        metadata={"help": "Compare diseases on phenotype sets extended with HPO ancestors (else annotated terms)."},
    )
    min_phenotypes: int = field(default=5, metadata={"help": "Diseases with fewer annotated phenotypes are not used."})
    seed_questions: str | None = field(
        default=None,
        metadata={
            "help": "Human-annotated MCQs for the seed-based share: JSONL of MCQItem, or a reference-format "
            "benchmark JSON. Required unless rare_ratio == 1."
        },
    )
    paraphrase_seeds: bool = field(
        default=True, metadata={"help": "Paraphrase seed questions through the generator when one is given."}
    )
    rewrite: bool = field(
        default=False, metadata={"help": "Rewrite knowledge-item templates into clinical prose with the generator."}
    )
    rewrite_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(temperature=0.7, top_p=0.95, top_k=50, max_tokens=512),
        metadata={"help": "Sampling for rewrites and paraphrases (seed is set per run from `seed`)."},
    )
    rewrite_batch_size: int = field(default=16, metadata={"help": "Prompts per generator call."})
    generator: GeneratorConfig | None = field(
        default=None,
        metadata={"help": "Backend for rewrite/paraphrase when run_synthesis gets no generator object."},
    )
    decontaminate_against: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmark files (reference JSON or JSONL) or folders of them; items sharing a 13-gram are dropped."},
    )
    contamination_ngram: int = field(default=13, metadata={"help": "n of the n-gram overlap test (GPT-3 used 13)."})
    near_duplicate_threshold: float = field(
        default=0.8, metadata={"help": "Estimated Jaccard of word n-gram sets at or above which an item is a near-duplicate."}
    )
    shingle_size: int = field(default=3, metadata={"help": "Word n-gram size for near-duplicate detection."})
    heldout_fraction: float = field(
        default=HELDOUT_FRACTION,
        metadata={"help": "Share of rare diseases (hash of id) reserved for the held-out benchmark; never used here."},
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where the parsed knowledge base is cached (default ~/.cache/medssr/knowledge)."}
    )
    max_attempts_per_item: int = field(
        default=40, metadata={"help": "Candidates tried for one quota cell before it is reported as a shortfall."}
    )

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("n: must be >= 1")
        if not 0.0 <= self.rare_ratio <= 1.0:
            raise ValueError("rare_ratio: must be in [0, 1]")
        if self.options_per_item not in (4, 5):
            raise ValueError("options_per_item: must be 4 or 5")
        unknown = set(self.question_types) - set(QUESTION_TYPES)
        if unknown:
            raise ValueError(f"question_types: unknown types {sorted(unknown)}; known: {', '.join(QUESTION_TYPES)}")
        unknown = (set(self.difficulty) | set(self.findings_shown)) - set(DIFFICULTIES)
        if unknown:
            raise ValueError(f"difficulty: unknown levels {sorted(unknown)}; known: {', '.join(DIFFICULTIES)}")
        for name in ("question_types", "difficulty", "category_weights"):
            weights = getattr(self, name)
            if weights is not None and (any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0):
                raise ValueError(f"{name}: weights must be >= 0 and not all zero")
        if any(self.findings_shown.get(d, 0) < 1 for d in DIFFICULTIES):
            raise ValueError("findings_shown: every difficulty needs at least 1 finding")
        if self.rare_ratio < 1.0 and not self.seed_questions:
            raise ValueError("seed_questions: required when rare_ratio < 1 (the seed-based share needs questions)")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError("heldout_fraction: must be in [0, 1)")
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise ValueError("near_duplicate_threshold: must be in (0, 1]")
        if isinstance(self.decontaminate_against, (str, Path)):
            self.decontaminate_against = [str(self.decontaminate_against)]
