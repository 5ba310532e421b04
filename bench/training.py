"""Training benchmark: (a) our run_training's step time against plain TRL, (b) a learning-signal run.

(a) The same model, data and GRPO settings go through ``medssr.training.run_training`` and through a
    GRPOTrainer built by hand from TRL alone, alternately, several rounds; the per-step wall time
    (between consecutive ``on_step_end`` events, so checkpoint saves count) is compared as the median
    after warm-up. Our overhead target is <= 5 %.
(b) A learnable synthetic task (every question's answer is one fixed letter) trained with GRPO from a
    model that already writes "The answer is X." with a random letter: the mean reward over the first
    steps vs the last steps, and the curve as a PNG.

    .venv/bin/python bench/training.py [--out DIR] [--rounds 3] [--steps 12] [--signal-steps 60]

The tiny model is used (SmolLM2 takes about 30 s per GRPO step on 2 CPU cores); it is taught the
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
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

LETTERS = "ABCD"
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
    parser.add_argument("--rounds", type=int, default=6, help="Alternating rounds of ours vs plain TRL.")
    parser.add_argument("--steps", type=int, default=10, help="GRPO steps per overhead run.")
    parser.add_argument("--warmup", type=int, default=2, help="Steps of each run left out of the median.")
    parser.add_argument("--signal-steps", type=int, default=60, help="GRPO steps of the learning-signal run.")
    parser.add_argument("--window", type=int, default=10, help="Steps averaged at the start and at the end.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model on a shared machine).")
    args = parser.parse_args(argv)

    import torch

    from medssr.data import MCQItem, read_jsonl
    from medssr.models import build_tiny_model, teach_answer_format

    torch.set_num_threads(args.threads)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    random_task = write_task(work / "task-random.jsonl", 32, answer=None, seed=1)
    fixed_task = write_task(work / "task-fixed-C.jsonl", 32, answer="C", seed=2)
    model = teach_answer_format(
        build_tiny_model(work / "tiny"), read_jsonl(random_task, MCQItem).records, work / "tiny-answer-format",
        steps=60, rows_per_step=8, letters=LETTERS,
    )

    print(f"(a) step time, run_training vs plain TRL GRPOTrainer: {args.rounds} alternating rounds x {args.steps} steps "
          f"(first {args.warmup} of each left out), torch threads {args.threads}", flush=True)
    overhead = overhead_bench(model, random_task, work, args.rounds, args.steps, args.warmup)
    cpu_ms = {k: v * 1000 for k, v in overhead["median_step_cpu_s"].items()}
    wall_ms = {k: v * 1000 for k, v in overhead["median_step_wall_s"].items()}
    print(f"median step CPU time: ours {cpu_ms['ours']:.1f} ms, plain TRL {cpu_ms['plain']:.1f} ms "
          f"-> overhead {overhead['overhead_cpu_pct']:+.1f}% (target <= 5%)")
    print(f"median step wall time: ours {wall_ms['ours']:.1f} ms, plain TRL {wall_ms['plain']:.1f} ms "
          f"-> {overhead['overhead_wall_pct']:+.1f}% (paired by round: {overhead['overhead_wall_paired_pct']:+.1f}%)")
    print(f"(b) learning signal: {args.signal_steps} GRPO steps, every answer is C, model starts answering a random letter", flush=True)
    signal = learning_signal(model, fixed_task, work, args.signal_steps, args.window, work / "learning_signal.png")
    print(f"mean reward first {args.window} steps: {signal['reward_first']:.3f}, last {args.window} steps: {signal['reward_last']:.3f} "
          f"(correctness {signal['correctness_first']:.3f} -> {signal['correctness_last']:.3f})")
    print(f"curve: {signal['png']}")
    (work / "results.json").write_text(json.dumps({"overhead": overhead, "learning_signal": signal}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
