"""``medssr demo``: the whole MedSSR pipeline on this machine, then the champion answers questions.

Without ``--model``: ``medssr pipeline run --local --preset smol`` (SmolLM2-135M-Instruct, built once
from the packaged GGUF): synthesis, pseudo-labels, two GRPO stages, evaluation of base/stage 1/stage 2,
registration and the promotion gate in a local MLflow store (``.medssr/``); then this run's model
answers three example medical questions, named as the champion when the gate promoted it and as the
candidate when it refused, and the run's summary closes the output. With ``--model PATH`` only the
questions are answered, by that model. Everything runs on CPU through the batched transformers backend."""

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
    model: str = field(
        default="",
        metadata={"help": "Model folder/URI (also models:/NAME@ALIAS); empty: SmolLM2-135M-Instruct. `medssr demo` without --model runs "
                           "the pipeline first and uses its champion."},
    )
    max_tokens: int = field(default=96, metadata={"help": "New tokens per answer (small keeps the demo near a minute)."})
    temperature: float = field(default=0.0, metadata={"help": "0 is greedy: the same answers every run."})
    seed: int = field(default=0, metadata={"help": "Sampling seed when temperature > 0."})


def run_demo(config: DemoConfig, items: list[MCQItem] = EXAMPLES) -> list[dict]:
    """Answer ``items`` and return one row per item: completion, extracted letters, gold answer."""
    from medssr.answers import extract_answer
    from medssr.generation import GeneratorConfig, SamplingParams, build_generator
    from medssr.models import resolve_model
    from medssr.prompts import build_messages

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # three answers need no progress bars between them
    model = resolve_model(config.model or "smollm2")
    generator = build_generator(GeneratorConfig(model=model, batch_size=len(items), progress=False))
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


def run_pipeline_demo(preset: str) -> tuple[str, str, str, str]:
    """Run the pipeline locally with ``preset``; return its summary, its timings, the model to ask
    (``models:/NAME/VERSION``, this run's candidate) and what it is: the champion or a refused candidate."""
    from medssr.errors import UserError
    from medssr.references import RegistryReference
    from medssr.pipelines.presets import preset_params
    from medssr.pipelines.runner import resolved_params, run_local, stage_timings, step_logs_folder, timing_report
    from medssr.pipelines.summary import pipeline_summary
    from medssr.tracking import KIND_TAG, PIPELINE_RUN_TAG, Tracker, TrackingConfig

    params = resolved_params(preset_params(preset))
    print(f"medssr demo: pipeline run {params['run_id']} (preset {preset}) with kfp.local; MLflow store under .medssr/", flush=True)
    print(f"  step logs: {step_logs_folder(None, params['run_id'])}", flush=True)
    try:
        run = run_local(params)
    except RuntimeError as exc:  # a step failed: its log's end is shown above
        raise UserError(f"demo pipeline run {params['run_id']} failed: {exc}") from None
    timings = timing_report(run.wall_seconds, stage_timings(params["run_id"], params["tracking_uri"], params["experiment"]), run.step_seconds)
    summary = pipeline_summary(params["run_id"], params["tracking_uri"], params["experiment"], run.wall_seconds)
    tracker = Tracker(TrackingConfig(tracking_uri=params["tracking_uri"], experiment=params["experiment"]))
    query = f"tags.`{PIPELINE_RUN_TAG}` = '{params['run_id']}' and tags.`{KIND_TAG}` = 'pipeline'"
    tags = tracker.call(tracker.client.search_runs, [tracker.experiment_id], filter_string=query, max_results=1)[0].data.tags
    version = tags["medssr.registered_version"]
    role = "champion" if tags.get("medssr.champion_version") == version else "candidate (the gate did not promote it)"
    return summary, timings, str(RegistryReference(tags["medssr.registered_model"], version=version)), role


def _handle(args) -> int:
    import dataclasses

    from medssr.configs import from_args

    config, summary, timings = from_args(DemoConfig, args), "", ""
    if not config.model:
        summary, timings, model, role = run_pipeline_demo(args.preset)
        print(f"\n=== this run's model, {model}, the {role}, answers ===")
        config = dataclasses.replace(config, model=model)
    _print_answers(run_demo(config))
    if summary:
        print(f"\n=== timings ===\n{timings}\n\n{summary}")
    return 0


def register(subparsers) -> None:
    from medssr.configs import add_arguments

    parser = subparsers.add_parser(
        "demo", help="Run the MedSSR pipeline locally (preset smol), then the champion answers example questions."
    )
    parser.add_argument("--preset", choices=["smol", "tiny"], default="smol", help="Pipeline preset (smol: SmolLM2-135M).")
    parser.add_argument("--config", help="YAML of the answers' settings (the options below); options override it.")
    add_arguments(parser, DemoConfig)
    parser.set_defaults(func=_handle)
