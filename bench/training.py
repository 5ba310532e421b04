"""Training benchmark: (r) rollouts, TRL's vs ours, on SmolLM2; (a) run_training's overhead over plain TRL;
(b) a learning-signal run.

(r) SmolLM2-135M GRPO on MedQA questions, the same TrainingConfig through run_training, once with
    TRL's own rollout (``generation_backend="trl"``: ``model.generate``) and once with medssr's
    generator as ``rollout_func`` (the default), alternating arms round by round in one process so
    that machine load hits both. Per step: rollout time (``GRPOTrainer._generate``: tokenizing,
    sampling, decoding), forward/backward (``training_step`` without its input preparation), and the
    rest (rewards, padding, optimizer step, callbacks, logging). Target: our rollout >= 3x faster. A
    third arm adds the shared-prompt forward/backward (``shared_prompt_forward``) to our rollout. The
    ``-bf16`` arms (``--rollout-arms``) run the same in bf16, TRL's default: autocast over float32 weights
    on a CPU; each of our arms is compared with TRL's rollout in its precision and with TRL's fastest.
    The ``vllm`` arms are the peer: ``use_vllm``, TRL's colocated engine on vLLM's CPU build (``make
    vllm``), in the trainer's dtype; each of our arms is compared with it in the same precision, and its
    engine start (in the trainer's construction, before the first step) is reported apart.

(a) The same model, data and GRPO settings go through ``medssr.training.run_training`` and through a
    GRPOTrainer built by hand from TRL alone, alternately, several rounds; the per-step wall time
    (between consecutive ``on_step_end`` events, so checkpoint saves count) is compared as the median
    after warm-up. Our overhead target is <= 5 %.
(b) A learnable synthetic task (every question's answer is one fixed letter) trained with GRPO from a
    model that already writes "The answer is X." with a random letter: the mean reward over the first
    steps vs the last steps, and the curve as a PNG.

    .venv/bin/python bench/training.py [--out DIR] [--parts rollouts,overhead,signal] [--rollout-rounds 2] ...

(a) and (b) use the tiny model (SmolLM2 takes about 30 s per GRPO step on 2 CPU cores), taught the
answer format first by a few supervised steps, since a random model never states an answer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import record

from medssr.locations import benchmarks_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LETTERS = "ABCD"
REPO = Path(__file__).resolve().parents[1]
# The benchmarks location's MedQA file, else the small copy the tests use.
MEDQA_FILES = [*([benchmarks / "test_short_medqa.json"] if (benchmarks := benchmarks_dir(required=False)) else []),
               REPO / "tests" / "data" / "eval_benchmarks" / "test_short_medqa.json"]
STEMS = [
    "A child presents with seizures, ataxia and hypotonia. Which diagnosis is most likely?",
    "An adult presents with intellectual disability and onset in childhood. Which gene is causal?",
    "What is the mode of inheritance of this rare disease of the nervous system?",
    "A patient presents with hypotonia and seizures. Which finding is most likely?",
]


def write_task(path: Path, count: int, answer: str | None, seed: int) -> Path:
    """Supervised-stage JSONL: options shuffled per question; the answer is ``answer`` (or random when None)."""
    from medssr.data import MCQItem, write_jsonl

    rng = random.Random(seed)
    items = []
    for index in range(count):
        texts = [f"option text number {n}" for n in rng.sample(range(10), len(LETTERS))]
        items.append(
            MCQItem(
                id=f"bench-{index}",
                stem=STEMS[index % len(STEMS)],
                options=dict(zip(LETTERS, texts, strict=True)),
                answer=answer or rng.choice(LETTERS),
                source="bench",
            )
        )
    write_jsonl(path, items)
    return path


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU time between consecutive optimizer steps (saves and callbacks included).

        CPU time of this process is the steadier measure on a machine shared with other jobs: their
        load stretches wall time but not the work this process does.
        """

        def __init__(self):
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self._last = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self._last is None:
                self._last = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            now = (time.perf_counter(), time.process_time())
            self.wall.append(now[0] - self._last[0])
            self.cpu.append(now[1] - self._last[1])
            self._last = now

    return StepTimer()


class PhaseTimer:
    """Per optimizer step: wall and CPU time of the whole step and of its rollout and forward/backward.

    Wraps three GRPOTrainer methods for as long as it is entered (both arms alike):
    ``_generate`` (the rollout), ``_prepare_inputs`` (rollout + rewards + padding) and
    ``training_step`` (``_prepare_inputs`` + forward + backward). CPU time of this process is the
    steadier measure on a machine shared with other jobs: their load stretches wall time, not work.
    """

    PHASES = (("_generate", "rollout"), ("_prepare_inputs", "prepare"), ("training_step", "training_step"))

    def __init__(self):
        self.steps: list[dict] = []
        self._current = {phase: [0.0, 0.0] for _, phase in self.PHASES}
        self._last = None
        self._originals = {}

    @staticmethod
    def _clocks() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def __enter__(self):
        from trl import GRPOTrainer

        for name, phase in self.PHASES:
            original = getattr(GRPOTrainer, name)
            self._originals[name] = original

            def timed(trainer, *args, _original=original, _phase=phase, **kwargs):
                start = self._clocks()
                try:
                    return _original(trainer, *args, **kwargs)
                finally:
                    for clock, (now, then) in enumerate(zip(self._clocks(), start)):
                        self._current[_phase][clock] += now - then

            setattr(GRPOTrainer, name, timed)
        return self

    def __exit__(self, *exc):
        from trl import GRPOTrainer

        for name, original in self._originals.items():
            setattr(GRPOTrainer, name, original)

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class StepBoundaries(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if timer._last is None:
                    timer._last = timer._clocks()

            def on_step_end(self, args, state, control, **kwargs):
                now = timer._clocks()
                record = {}
                for clock, kind in enumerate(("wall", "cpu")):
                    phases = {phase: values[clock] for phase, values in timer._current.items()}
                    step = now[clock] - timer._last[clock]
                    forward_backward = phases["training_step"] - phases["prepare"]
                    record[kind] = {
                        "step": step, "rollout": phases["rollout"], "forward_backward": forward_backward,
                        "rest": step - phases["rollout"] - forward_backward,
                    }
                timer.steps.append(record)
                timer._current = {phase: [0.0, 0.0] for phase in timer._current}
                timer._last = now

        return StepBoundaries()


def medqa_task(path: Path, count: int) -> Path:
    """The first ``count`` MedQA questions (the reference benchmark file) as supervised training JSONL."""
    from medssr.data import read_reference_benchmark, write_jsonl

    source = next((p for p in MEDQA_FILES if p.is_file()), None)
    if source is None:
        raise SystemExit(f"no MedQA file in {', '.join(map(str, MEDQA_FILES))}")
    items = read_reference_benchmark(source, on_error="skip").records[:count]
    write_jsonl(path, items)
    return path


ARMS = {  # name: (label, generation_backend, shared_prompt_forward, bf16, fused decode step)
    "trl": ("TRL rollout, TRL forward", "trl", False, False, True),
    "medssr": ("medssr rollout, TRL forward", "medssr", False, False, True),
    "medssr+shared": ("medssr rollout, shared-prompt forward", "medssr", True, False, True),
    # bf16=True is TRL's own default; on a CPU it is autocast over float32 weights (AMX runs bf16 matmuls).
    "trl-bf16": ("bf16: TRL rollout, TRL forward", "trl", False, True, True),
    "medssr-bf16": ("bf16: medssr rollout, TRL forward", "medssr", False, True, True),
    "medssr+shared-bf16": ("bf16: medssr rollout, shared-prompt fwd", "medssr", True, True, True),
    # Our rollout with each decode step through the model's forward pass instead of the fused step.
    "medssr-bf16-forward": ("bf16: medssr rollout (forward steps)", "medssr", False, True, False),
    # The peer: TRL's colocated vLLM engine (use_vllm) on vLLM's CPU build.
    "vllm": ("vLLM CPU rollout, TRL forward", "vllm", False, False, True),
    "vllm-bf16": ("bf16: vLLM CPU rollout, TRL forward", "vllm", False, True, True),
}
DEFAULT_ARMS = ("trl", "medssr", "medssr+shared")


def rollout_bench(model: Path, data: Path, work: Path, rounds: int, steps: int, warmup: int, completion_tokens: int,
                  accumulation: int = 1, arms: tuple[str, ...] = DEFAULT_ARMS) -> dict:
    """(r): the arms alternately, ``rounds`` runs of ``steps`` steps each; medians over the steps after warm-up.
    With ``accumulation`` > 1 each optimizer step trains on that many prompts' groups, all sampled in one
    rollout call (TRL's generation batch is per-device batch x gradient accumulation)."""
    names = ("step", "rollout", "forward_backward", "rest")
    measured: dict[str, list[dict]] = {arm: [] for arm in arms}
    lengths: dict[str, list[float]] = {arm: [] for arm in arms}
    engine_start: dict[str, list[float]] = {arm: [] for arm in arms if ARMS[arm][1] == "vllm"}
    for round_index in range(rounds):
        order = list(arms)[round_index % len(arms):] + list(arms)[: round_index % len(arms)]  # who goes first rotates
        for arm in order:
            out = work / f"rollout-{arm}"
            shutil.rmtree(out, ignore_errors=True)
            generation_backend, shared_prompt_forward, bf16, fused = ARMS[arm][1:]
            use_vllm = generation_backend == "vllm"
            settings = dict(
                stage="supervised", model=str(model), data=str(data), output_dir=str(out),
                generation_backend="medssr" if use_vllm else generation_backend, use_vllm=use_vllm, vllm_kv_cache_gib=2 if use_vllm else 0,
                shared_prompt_forward=shared_prompt_forward, bf16=bf16, learning_rate=1e-6, num_generations=8, per_device_train_batch_size=8,
                max_completion_length=completion_tokens,
                gradient_accumulation_steps=accumulation, temperature=1.0, max_steps=steps, save_steps=steps, logging_steps=1, seed=round_index,
            )
            # A colocated vLLM engine sets up torch.distributed and thread binding in the process it starts in: its
            # runs go to a child process each, measured by the same code, so no arm runs in a process vLLM changed.
            run = measure_in_child(settings, fused) if use_vllm else measure_run(settings, fused)
            engine_start.get(arm, []).extend(run["engine_start_s"])
            kept = run["steps"][warmup:]
            measured[arm] += kept
            lengths[arm] += run["lengths"][warmup:]
            print(f"  round {round_index + 1} {ARMS[arm][0]:34s} wall (cpu): " + ", ".join(
                f"{name} {statistics.median(s['wall'][name] for s in kept):5.1f} ({statistics.median(s['cpu'][name] for s in kept):5.1f}) s"
                for name in names
            ) + f"; mean completion {statistics.fmean(lengths[arm][-len(kept):]):.1f} tokens", flush=True)
    median = {
        kind: {arm: {name: statistics.median(s[kind][name] for s in steps_) for name in names} for arm, steps_ in measured.items()}
        for kind in ("wall", "cpu")
    }
    return {
        "median_s": median,
        "mean_completion_tokens": {arm: statistics.fmean(values) for arm, values in lengths.items()},
        "rollout_speedup": {kind: {arm: rollout_speedups(median[kind], arm, arms) for arm in arms if ARMS[arm][1] == "medssr"} for kind in median},
        "step_speedup": {kind: {arm: median[kind]["trl"]["step"] / median[kind][arm]["step"] for arm in arms} for kind in median},
        "completions_per_rollout": 8 * accumulation,
        "steps_measured_each": len(measured["trl"]),
        "vllm_engine_start_s": {arm: statistics.median(times) for arm, times in engine_start.items() if times},
    }


def measure_run(settings: dict, fused: bool) -> dict:
    """One run_training of ``settings``: each step's wall and CPU time by phase, completion lengths, and the start
    time of each colocated vLLM engine."""
    from medssr.training import TrainingConfig, run_training

    timer, starts = PhaseTimer(), []
    with timer, decode_steps(fused), engine_start_timer(starts):
        result = run_training(TrainingConfig(**settings), callbacks=[timer.callback()])
    history = [json.loads(line) for line in result.history_path.read_text().splitlines()]
    return {"steps": timer.steps, "lengths": [h["completions/mean_length"] for h in history if "completions/mean_length" in h],
            "engine_start_s": starts}


def measure_in_child(settings: dict, fused: bool) -> dict:
    """:func:`measure_run` in a child process (this script with ``--measure-run``), with this process's torch threads."""
    import subprocess

    import torch

    payload = json.dumps({"settings": settings, "fused": fused, "threads": torch.get_num_threads()})
    child = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--measure-run", payload], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


@contextmanager
def engine_start_timer(times: list[float]):
    """Appends to ``times`` how long each colocated vLLM engine took to start (TRL's ``VLLMGeneration._init_vllm``)."""
    from trl.generation.vllm_generation import VLLMGeneration

    start_engine = VLLMGeneration._init_vllm

    def timed(generation):
        started = time.perf_counter()
        start_engine(generation)
        times.append(time.perf_counter() - started)

    VLLMGeneration._init_vllm = timed
    try:
        yield
    finally:
        VLLMGeneration._init_vllm = start_engine


@contextmanager
def decode_steps(fused: bool):
    """Our rollout's generator with the fused decode step (its default) or the model's forward pass."""
    from medssr.generation.transformers_backend import TransformersGenerator

    on_model = TransformersGenerator.on_model.__func__
    TransformersGenerator.on_model = classmethod(lambda cls, *args, **kwargs: on_model(cls, *args, **{**kwargs, "fused_decode": fused}))
    try:
        yield
    finally:
        TransformersGenerator.on_model = classmethod(on_model)


def rollout_speedups(median: dict, arm: str, arms) -> dict:
    """Our arm's rollout time against TRL's in the same precision (when that arm ran) and TRL's fastest here, and
    against vLLM's in the same precision (when that arm ran)."""
    trl_arms = [other for other in arms if ARMS[other][1] == "trl"]
    speedups = {"fastest_trl": min(median[other]["rollout"] for other in trl_arms) / median[arm]["rollout"]}
    for other in trl_arms:
        if ARMS[other][3] == ARMS[arm][3]:
            speedups["same_precision"] = median[other]["rollout"] / median[arm]["rollout"]
    for other in arms:
        if ARMS[other][1] == "vllm" and ARMS[other][3] == ARMS[arm][3]:
            speedups["vllm_same_precision"] = median[other]["rollout"] / median[arm]["rollout"]
    return speedups


def run_ours(config, timer) -> None:
    from medssr.training import run_training

    shutil.rmtree(config.output_dir, ignore_errors=True)
    run_training(config, callbacks=[timer])


def run_plain_trl(config, timer) -> None:
    """The same run written with TRL alone: hand-built dataset and GRPOTrainer, without our data
    loading, checkpoint markers, mirror or metrics files."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    from medssr.prompts import SYSTEM_PROMPT
    from medssr.training.grpo import build_grpo_config, build_reward_functions

    shutil.rmtree(config.output_dir, ignore_errors=True)
    rows = []
    for line in Path(config.data).read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        question = "\n".join([item["stem"]] + [f"{k}. {v}" for k, v in item["options"].items()])
        rows.append({
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
            "target": item["answer"],
            "letters": "".join(item["options"]),
        })
    # The same GRPOConfig as ours; only the Trainer's own checkpoint rotation replaces our callback.
    args = build_grpo_config(config, Path(config.output_dir) / "checkpoints")
    args.save_total_limit = config.save_total_limit
    trainer = GRPOTrainer(
        model=config.model,
        reward_funcs=build_reward_functions(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(config.model, padding_side="left"),
        callbacks=[timer],
    )
    trainer.train()
    trainer.save_model(config.output_dir)


def overhead_bench(model: Path, data: Path, work: Path, rounds: int, steps: int, warmup: int) -> dict:
    from medssr.training import TrainingConfig

    def config(name: str):
        return TrainingConfig(
            stage="supervised", model=str(model), data=str(data), output_dir=str(work / name),
            learning_rate=1e-3, num_generations=8, per_device_train_batch_size=16, max_completion_length=16,
            max_steps=steps, save_steps=4, save_total_limit=2, logging_steps=1, seed=0,
            generation_backend="trl", shared_prompt_forward=False,  # what the plain-TRL arm does too
        )

    wall = {"ours": [], "plain": []}
    cpu = {"ours": [], "plain": []}
    paired_wall_ratios = []
    for round_index in range(rounds):
        order = [("ours", run_ours), ("plain", run_plain_trl)]
        if round_index % 2:
            order.reverse()  # alternate who goes first, so drift in machine load hits both alike
        round_wall = {}
        for name, runner in order:
            timer = step_timer()
            runner(config(name), timer)
            wall[name] += timer.wall[warmup:]
            cpu[name] += timer.cpu[warmup:]
            round_wall[name] = statistics.median(timer.wall[warmup:])
            print(f"  round {round_index + 1} {name:5s}: median step wall {round_wall[name] * 1000:.1f} ms, "
                  f"cpu {statistics.median(timer.cpu[warmup:]) * 1000:.1f} ms", flush=True)
        paired_wall_ratios.append(round_wall["ours"] / round_wall["plain"])
    median = {kind: {name: statistics.median(times) for name, times in data.items()} for kind, data in (("wall", wall), ("cpu", cpu))}
    return {
        "median_step_cpu_s": median["cpu"],
        "median_step_wall_s": median["wall"],
        "overhead_cpu_pct": (median["cpu"]["ours"] / median["cpu"]["plain"] - 1) * 100,
        "overhead_wall_pct": (median["wall"]["ours"] / median["wall"]["plain"] - 1) * 100,
        "overhead_wall_paired_pct": (statistics.median(paired_wall_ratios) - 1) * 100,
        "steps_measured_each": len(wall["ours"]),
    }


def learning_signal(model: Path, data: Path, work: Path, steps: int, window: int, png: Path) -> dict:
    from medssr.training import TrainingConfig, run_training

    out = work / "signal"
    shutil.rmtree(out, ignore_errors=True)
    config = TrainingConfig(
        stage="supervised", model=str(model), data=str(data), output_dir=str(out),
        learning_rate=1e-3, num_generations=8, per_device_train_batch_size=8, max_completion_length=16,
        max_steps=steps, save_steps=steps, logging_steps=1, seed=0, temperature=1.0,
    )
    result = run_training(config)
    history = [json.loads(line) for line in result.history_path.read_text().splitlines()]
    points = [(h["step"], h["reward"], h["rewards/correctness_reward/mean"]) for h in history if "reward" in h]
    rewards = [p[1] for p in points]
    first, last = statistics.fmean(rewards[:window]), statistics.fmean(rewards[-window:])
    accuracy_first = statistics.fmean(p[2] for p in points[:window])
    accuracy_last = statistics.fmean(p[2] for p in points[-window:])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([p[0] for p in points], rewards, label="mean reward (correctness + 0.1 x format)", alpha=0.6)
    ax.plot([p[0] for p in points], [p[2] for p in points], label="correctness reward", alpha=0.6)
    smooth = [statistics.fmean(rewards[max(0, i - window + 1) : i + 1]) for i in range(len(rewards))]
    ax.plot([p[0] for p in points], smooth, label=f"mean reward, rolling {window}", linewidth=2)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_title("GRPO learning signal: tiny model, fixed-letter synthetic task")
    ax.legend()
    ax.grid(alpha=0.3)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return {
        "steps": len(rewards), "window": window,
        "reward_first": first, "reward_last": last,
        "correctness_first": accuracy_first, "correctness_last": accuracy_last,
        "png": str(png),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".medssr/bench/training", help="Work folder; results.json and the PNG go here.")
    parser.add_argument("--parts", default="rollouts,overhead,signal", help="Comma-separated parts to run: rollouts, overhead, signal.")
    parser.add_argument("--rollout-rounds", type=int, default=2, help="(r) alternating rounds of TRL's rollout vs ours.")
    parser.add_argument("--rollout-steps", type=int, default=3, help="(r) GRPO steps per run.")
    parser.add_argument("--rollout-warmup", type=int, default=1, help="(r) steps of each run left out of the medians.")
    parser.add_argument("--rollout-tokens", type=int, default=64, help="(r) max_completion_length.")
    parser.add_argument("--rollout-threads", type=int, default=2, help="(r) torch threads for SmolLM2.")
    parser.add_argument("--rollout-accumulation", type=int, default=1,
                        help="(r) gradient accumulation steps: prompts per optimizer step, sampled in one rollout call of 8 x this many completions.")
    parser.add_argument("--rollout-arms", default=",".join(DEFAULT_ARMS), help=f"(r) arms to run, of {', '.join(ARMS)} (trl is the reference).")
    parser.add_argument("--rounds", type=int, default=6, help="(a) alternating rounds of ours vs plain TRL.")
    parser.add_argument("--steps", type=int, default=10, help="(a) GRPO steps per overhead run.")
    parser.add_argument("--warmup", type=int, default=2, help="(a) steps of each run left out of the median.")
    parser.add_argument("--signal-steps", type=int, default=60, help="(b) GRPO steps of the learning-signal run.")
    parser.add_argument("--window", type=int, default=10, help="(b) steps averaged at the start and at the end.")
    parser.add_argument("--threads", type=int, default=1, help="(a), (b) torch threads (1 is fastest for the tiny model on a shared machine).")
    parser.add_argument("--measure-run", default="", help=argparse.SUPPRESS)  # one run of (r), for measure_in_child
    record.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.measure_run:
        import torch

        payload = json.loads(args.measure_run)
        torch.set_num_threads(payload["threads"])
        print("\n" + json.dumps(measure_run(payload["settings"], payload["fused"])))
        return 0
    parts = set(args.parts.split(","))
    if parts - {"rollouts", "overhead", "signal"}:
        parser.error(f"--parts: unknown {sorted(parts - {'rollouts', 'overhead', 'signal'})}")

    import torch

    from medssr.data import MCQItem, read_jsonl
    from medssr.models import build_smollm2, build_tiny_model, teach_answer_format

    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}

    if "rollouts" in parts:
        torch.set_num_threads(args.rollout_threads)
        arms = tuple(args.rollout_arms.split(","))
        if "trl" not in arms or set(arms) - set(ARMS):
            parser.error(f"--rollout-arms: give trl and any of {', '.join(ARMS)}")
        print(f"(r) SmolLM2 GRPO on MedQA, {8 * args.rollout_accumulation} completions of up to {args.rollout_tokens} tokens "
              f"per optimizer step ({args.rollout_accumulation} prompts x 8) in one rollout call, TRL's rollout vs ours: "
              f"{args.rollout_rounds} alternating rounds x {args.rollout_steps} steps (first {args.rollout_warmup} of each left out), "
              f"torch threads {args.rollout_threads}", flush=True)
        rollouts = rollout_bench(build_smollm2(), medqa_task(work / "medqa.jsonl", 32), work, args.rollout_rounds,
                                 args.rollout_steps, args.rollout_warmup, args.rollout_tokens, args.rollout_accumulation, arms)
        for kind in ("wall", "cpu"):
            for arm in arms:
                label = ARMS[arm][0]
                m = rollouts["median_s"][kind][arm]
                print(f"median {kind:4s} {label:34s}: step {m['step']:6.2f} s = rollout {m['rollout']:6.2f} + forward/backward "
                      f"{m['forward_backward']:6.2f} + rest {m['rest']:5.2f}  (step {rollouts['step_speedup'][kind][arm]:.2f}x TRL's)")
            for arm, speedup in rollouts["rollout_speedup"][kind].items():
                same = f"{speedup['same_precision']:.2f}x TRL's in the same precision, " if "same_precision" in speedup else ""
                peer = f"; {speedup['vllm_same_precision']:.2f}x vLLM CPU's in the same precision" if "vllm_same_precision" in speedup else ""
                print(f"{kind}: {ARMS[arm][0]}: rollout {same}{speedup['fastest_trl']:.2f}x TRL's fastest here (target >= 3x){peer}")
        for arm, seconds in rollouts["vllm_engine_start_s"].items():
            print(f"{ARMS[arm][0]}: engine start {seconds:.1f} s per run (median; before the first step, not in the step times)")
        tokens = rollouts["mean_completion_tokens"]
        print("mean completion length: " + ", ".join(f"{arm} {value:.1f}" for arm, value in tokens.items())
              + f" tokens; {rollouts['steps_measured_each']} steps measured per arm")
        results["rollouts" if args.rollout_accumulation == 1 else f"rollouts_x{args.rollout_accumulation}"] = rollouts
        wall = rollouts["median_s"]["wall"]
        starts = rollouts["vllm_engine_start_s"]
        rows = [[ARMS[arm][0], wall[arm]["step"], wall[arm]["rollout"], wall[arm]["forward_backward"], tokens.get(arm, ""), starts.get(arm, "")]
                for arm in arms]
        fastest = max(speedup["fastest_trl"] for speedup in rollouts["rollout_speedup"]["wall"].values())
        record.write_record(
            args, "training", {"rollouts": rollouts},
            tables=[{"title": f"{args.rollout_accumulation} prompts x 8 completions of up to {args.rollout_tokens} tokens per step, median wall time:",
                     "columns": ["arm", "whole step (s)", "rollout (s)", "forward/backward (s)", "mean completion (tokens)",
                                 "engine start (s), not in the step"], "rows": rows}],
            headline={"name": f"rollout, TRL's fastest / ours, {args.rollout_accumulation} x 8 x {args.rollout_tokens} tokens", "value": fastest,
                      "target": ">= 3"},
        )

    if parts & {"overhead", "signal"}:
        torch.set_num_threads(args.threads)
        random_task = write_task(work / "task-random.jsonl", 32, answer=None, seed=1)
        fixed_task = write_task(work / "task-fixed-C.jsonl", 32, answer="C", seed=2)
        model = teach_answer_format(
            build_tiny_model(work / "tiny"), read_jsonl(random_task, MCQItem).records, work / "tiny-answer-format",
            steps=60, rows_per_step=8, letters=LETTERS,
        )
    if "overhead" in parts:
        print(f"(a) step time, run_training vs plain TRL GRPOTrainer (both with TRL's rollout): {args.rounds} alternating rounds x "
              f"{args.steps} steps (first {args.warmup} of each left out), torch threads {args.threads}", flush=True)
        overhead = overhead_bench(model, random_task, work, args.rounds, args.steps, args.warmup)
        cpu_ms = {k: v * 1000 for k, v in overhead["median_step_cpu_s"].items()}
        wall_ms = {k: v * 1000 for k, v in overhead["median_step_wall_s"].items()}
        print(f"median step CPU time: ours {cpu_ms['ours']:.1f} ms, plain TRL {cpu_ms['plain']:.1f} ms "
              f"-> overhead {overhead['overhead_cpu_pct']:+.1f}% (target <= 5%)")
        print(f"median step wall time: ours {wall_ms['ours']:.1f} ms, plain TRL {wall_ms['plain']:.1f} ms "
              f"-> {overhead['overhead_wall_pct']:+.1f}% (paired by round: {overhead['overhead_wall_paired_pct']:+.1f}%)")
        results["overhead"] = overhead
    if "signal" in parts:
        print(f"(b) learning signal: {args.signal_steps} GRPO steps, every answer is C, model starts answering a random letter", flush=True)
        signal = learning_signal(model, fixed_task, work, args.signal_steps, args.window, work / "learning_signal.png")
        print(f"mean reward first {args.window} steps: {signal['reward_first']:.3f}, last {args.window} steps: {signal['reward_last']:.3f} "
              f"(correctness {signal['correctness_first']:.3f} -> {signal['correctness_last']:.3f})")
        print(f"curve: {signal['png']}")
        results["learning_signal"] = signal
    results_path.write_text(json.dumps(results, indent=2))
    if parts & {"overhead", "signal"}:  # this run's parts, not what results.json kept from earlier runs
        figures = {key: results[key] for key, part in (("overhead", "overhead"), ("learning_signal", "signal")) if part in parts}
        headline = None
        if "overhead" in figures:
            headline = {"name": "step CPU-time overhead vs plain TRL (%)", "value": figures["overhead"]["overhead_cpu_pct"], "target": "<= 5"}
        record.write_record(args, "training", figures, headline=headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
