"""``medssr demo``: the whole MedSSR pipeline on this machine, then the champion answers questions.

Without ``--model``: ``medssr pipeline run --local --preset smol`` (SmolLM2-135M-Instruct, built once
from the packaged GGUF): synthesis, pseudo-labels, two GRPO stages, evaluation of base/stage 1/stage 2,
registration and the promotion gate in a local MLflow store (``.medssr/``); then the model holding
alias ``champion`` answers three example medical questions. With ``--model PATH`` only the questions
are answered, by that model. Everything runs on CPU through the batched transformers backend."""

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
    model: str = field(default="", metadata={"help": "Model folder/URI (also models:/NAME@ALIAS); empty: SmolLM2-135M-Instruct. `medssr demo` without --model runs the pipeline first and uses its champion."})
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


def _print_answers(rows: list[dict]) -> None:
    for number, row in enumerate(rows, start=1):
        item = row["item"]
        print(f"\n[{number}/{len(rows)}] {item.render()}")
        print(f"--- model answer ---\n{row['completion'].strip()}")
        print(f"--- extracted: strict={row['strict'] or '-'}  lenient={row['lenient'] or '-'}  gold={item.answer}")


def run_pipeline_demo(preset: str) -> str:
    """Run the pipeline locally with ``preset``; print its evaluation table and timings; return the champion ref."""
    from pathlib import Path

    from medssr.pipelines.presets import preset_params
    from medssr.pipelines.runner import resolved_params, run_local, stage_timings, timing_report

    params = resolved_params(preset_params(preset))
    print(f"medssr demo: pipeline run {params['run_id']} (preset {preset}) with kfp.local; MLflow store under .medssr/", flush=True)
    run = run_local(params)
    report = Path(params["workspace"]) / params["run_id"] / "evaluate" / "results.md"
    print("\n=== evaluation: base vs stage 1 vs stage 2 ===")
    print(report.read_text(encoding="utf-8") if report.is_file() else f"(no report at {report})")
    print("=== timings ===")
    print(timing_report(run.wall_seconds, stage_timings(params["run_id"], params["tracking_uri"], params["experiment"]), run.step_seconds))
    return f"models:/{params['model_name']}@champion"


def _handle(args) -> int:
    model = args.model
    if not model:
        model = run_pipeline_demo(args.preset)
        print(f"\n=== the champion ({model}) answers ===")
    _print_answers(run_demo(DemoConfig(model=model, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="Run the MedSSR pipeline locally (preset smol), then the champion answers example questions."
    )
    defaults = DemoConfig()
    parser.add_argument("--preset", choices=["smol", "tiny"], default="smol", help="Pipeline preset (smol: SmolLM2-135M).")
    parser.add_argument("--model", default=defaults.model, help=DemoConfig.__dataclass_fields__["model"].metadata["help"])
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens, help="New tokens per answer.")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 is greedy.")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Sampling seed when temperature > 0.")
    parser.set_defaults(func=_handle)
