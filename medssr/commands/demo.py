"""``medssr demo``: SmolLM2-135M-Instruct (built once from the packaged GGUF) answers three example
medical questions with the paper's prompt through the batched transformers backend, on CPU."""

from __future__ import annotations

from dataclasses import dataclass, field

from medssr.data import MCQItem

EXAMPLES = [
    MCQItem(
        id="demo-cf",
        stem="A 2-year-old boy has recurrent lung infections, poor weight gain and a raised sweat chloride. Which gene is most likely mutated?",
        options={"A": "CFTR", "B": "DMD", "C": "HBB", "D": "FBN1"},
        answer="A",
        source="demo",
    ),
    MCQItem(
        id="demo-marfan",
        stem="A tall 19-year-old has long fingers, upward lens dislocation and a dilated aortic root. Which protein is defective?",
        options={"A": "Type I collagen", "B": "Fibrillin-1", "C": "Elastin", "D": "Dystrophin"},
        answer="B",
        source="demo",
    ),
    MCQItem(
        id="demo-dmd",
        stem="A 5-year-old boy has proximal weakness, enlarged calves and a positive Gowers sign. What is the mode of inheritance?",
        options={"A": "Autosomal dominant", "B": "Autosomal recessive", "C": "X-linked recessive", "D": "Mitochondrial"},
        answer="C",
        source="demo",
    ),
]


@dataclass
class DemoConfig:
    model: str = field(default="", metadata={"help": "Model folder/URI; empty builds (once) and uses SmolLM2-135M-Instruct."})
    max_tokens: int = field(default=96, metadata={"help": "New tokens per answer (small keeps the demo near a minute)."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy: the same answers every run."})
    seed: int = field(default=0, metadata={"help": "Sampling seed when temperature > 0."})


def run_demo(config: DemoConfig, items: list[MCQItem] = EXAMPLES) -> list[dict]:
    """Answer ``items`` and return one row per item: completion, extracted letters, gold answer."""
    from medssr.answers import extract_answer
    from medssr.generation import GeneratorConfig, SamplingParams, build_generator
    from medssr.models import build_smollm2, resolve_model
    from medssr.prompts import build_messages

    model = resolve_model(config.model) if config.model else str(build_smollm2())
    generator = build_generator(GeneratorConfig(model=model, batch_size=len(items)))
    sampling = SamplingParams(temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed)
    completions = generator.generate([build_messages(item) for item in items], n=1, sampling=sampling)
    return [
        {
            "item": item,
            "completion": samples[0],
            "strict": extract_answer(samples[0], item.letters, "strict", item.options),
            "lenient": extract_answer(samples[0], item.letters, "lenient", item.options),
        }
        for item, samples in zip(items, completions)
    ]


def _handle(args) -> int:
    rows = run_demo(DemoConfig(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed))
    for number, row in enumerate(rows, start=1):
        item = row["item"]
        print(f"\n[{number}/{len(rows)}] {item.render()}")
        print(f"--- model answer ---\n{row['completion'].strip()}")
        print(f"--- extracted: strict={row['strict'] or '-'}  lenient={row['lenient'] or '-'}  gold={item.answer}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="Answer three example medical questions with SmolLM2-135M on CPU.")
    defaults = DemoConfig()
    parser.add_argument("--model", default=defaults.model, help=DemoConfig.__dataclass_fields__["model"].metadata["help"])
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="New tokens per answer.")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy.")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Sampling seed when temperature > 0.")
    parser.set_defaults(func=_handle)
