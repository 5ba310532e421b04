"""The ``vllm`` generation backend on vLLM's CPU build, one engine for the file: labelling and evaluation write
what the transformers backend writes, the letter-constrained second pass runs through it, greedy answers agree
with the transformers backend in float32, the settings reach the engine, and an engine killed mid-run is
reported with its cause and leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from medssr.data import EvalResult, LabeledItem, MCQItem, read_jsonl, write_jsonl
from medssr.generation.base import GeneratorConfig, SamplingParams
from tests.test_labeling import build_tiny_answerer, make_items

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

pytest.importorskip("vllm", reason="vLLM's CPU build is not installed (`make vllm`)")

FIXTURES = Path(__file__).parent / "data" / "eval_benchmarks"
ENGINE_SETTINGS = dict(dtype="float32", gpu_memory_utilization=0.07, kv_cache_gib=0.25, enforce_eager=True, progress=False)


@pytest.fixture(scope="module")
def answerer(tmp_path_factory) -> Path:
    """The tiny answerer ("The answer is B.", less often C) with head size 32, which vLLM's CPU attention runs."""
    from medssr.models import build_tiny_model

    base = tmp_path_factory.mktemp("vllm-answerer")
    return build_tiny_answerer(build_tiny_model(base / "tiny", attention_heads=2), base)


@pytest.fixture(scope="module")
def engine(answerer):
    from medssr.generation.vllm_backend import VLLMGenerator

    generator = VLLMGenerator(GeneratorConfig(backend="vllm", model=str(answerer), **ENGINE_SETTINGS))
    yield generator
    generator.close()


@pytest.fixture(scope="module")
def reference(answerer):
    """The transformers backend on the same model, float32."""
    from medssr.generation.transformers_backend import TransformersGenerator

    return TransformersGenerator(GeneratorConfig(model=str(answerer), dtype="float32", progress=False, batch_size=32))


def engine_processes(generator) -> list[int]:
    return [process.pid for process in generator.llm.llm_engine.engine_core.resources.engine_manager.processes]


def process_tree(root: int) -> set[int]:
    """``root`` and every process below it that is alive, from ``ps`` (not counting that ``ps``, nor zombies: an
    exited child the test process has not reaped yet holds nothing but its table entry)."""
    ps = subprocess.Popen(["ps", "-eo", "pid=,ppid=,stat="], stdout=subprocess.PIPE, text=True)
    table = [row for row in (line.split() for line in ps.communicate()[0].splitlines()) if int(row[0]) != ps.pid]
    children: dict[int, list[int]] = {}
    for pid, ppid, _ in table:
        children.setdefault(int(ppid), []).append(int(pid))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    alive = {int(pid) for pid, _, state in table if not state.startswith("Z")}
    return found & alive


def labelling_config(tmp_path: Path, model: Path, backend: str, **sampling) -> "LabelingConfig":  # noqa: F821
    from medssr.labeling import LabelingConfig

    data = tmp_path / "items.jsonl"
    write_jsonl(data, make_items(8))
    settings = ENGINE_SETTINGS if backend == "vllm" else dict(dtype="float32", progress=False)
    return LabelingConfig(
        data=str(data), out=str(tmp_path / backend / "labeled.jsonl"), generator=GeneratorConfig(backend=backend, model=str(model), **settings),
        n_samples=4, sampling=SamplingParams(**{"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 12, **sampling}),
        min_agreement=0.0, max_agreement=1.0, min_parsed=1, cache_dir=str(tmp_path / backend / "cache"),
    )


def test_labelling_through_vllm_writes_the_records_and_audit_the_transformers_backend_writes(engine, answerer, tmp_path):
    from medssr.labeling import run_labeling

    through_vllm = run_labeling(labelling_config(tmp_path, answerer, "vllm"), generator=engine)
    through_transformers = run_labeling(labelling_config(tmp_path, answerer, "transformers"))
    for result in (through_vllm, through_transformers):  # samples at temperature 1: most, not all, state an answer
        assert result.parse_rate >= 0.25 and result.kept and {item.label for item in result.kept} <= {"B", "C"}
    records = [[json.loads(line) for line in Path(result.paths["labeled"]).read_text().splitlines()]
               for result in (through_vllm, through_transformers)]
    assert records[0] and {tuple(sorted(r)) for r in records[0]} == {tuple(sorted(r)) for r in records[1]}
    assert all(LabeledItem.model_validate(r).n_samples == 4 for r in records[0])
    audits = [json.loads(Path(result.paths["json"]).read_text()) for result in (through_vllm, through_transformers)]
    assert sorted(audits[0]) == sorted(audits[1]) and sorted(through_vllm.metrics()) == sorted(through_transformers.metrics())


def test_the_letter_constrained_second_pass_recovers_cut_off_answers_through_vllm(engine, answerer, tmp_path):
    """Three tokens are too few to state an answer, so every sample goes to the second, one-token pass over the
    question's own letters, through the engine's allowed_token_ids."""
    from medssr.labeling import run_labeling

    result = run_labeling(labelling_config(tmp_path, answerer, "vllm", max_tokens=3), generator=engine)
    assert (result.parse_rate, result.recovered_rate) == (0.0, 1.0)
    for item in result.kept:
        assert not item.votes and sum(item.recovered_votes.values()) == 4 and set(item.recovered_votes) <= set("ABCD")


def test_evaluation_through_vllm_writes_what_the_transformers_backend_writes(engine, answerer, tmp_path):
    from medssr.evaluation import EvaluationConfig, run_evaluation

    results = {}
    for backend, generators in (("vllm", {str(answerer): engine}), ("transformers", None)):
        settings = ENGINE_SETTINGS if backend == "vllm" else dict(dtype="float32", progress=False)
        config = EvaluationConfig(
            models=[str(answerer)], model_names=["answerer"], benchmarks_dir=str(FIXTURES), benchmarks=["medqa", "pubmedqa"], n=2,
            sampling=SamplingParams(max_tokens=3), generator=GeneratorConfig(backend=backend, **settings),
            cache_dir=str(tmp_path / backend / "cache"), out_dir=str(tmp_path / backend / "out"), bootstrap_samples=50, use_hub=False,
        )
        results[backend] = (run_evaluation(config, generators), Path(config.out_dir))
    (vllm_run, vllm_out), (reference_run, reference_out) = results["vllm"], results["transformers"]
    medqa = vllm_run.summary["answerer"]["medqa"]
    assert medqa["recovery_rate"] == 1.0, "no cut-off answer was left unrecovered"
    samples = read_jsonl(vllm_out / "samples" / "answerer" / "medqa.jsonl", EvalResult).records
    assert len(samples) == 8 and all(s.strict is None and s.recovered in ("A", "B", "C", "D") for s in samples)
    reference_samples = read_jsonl(reference_out / "samples" / "answerer" / "medqa.jsonl", EvalResult).records
    assert [(s.item_id, s.sample) for s in samples] == [(s.item_id, s.sample) for s in reference_samples]
    for benchmark in ("medqa", "pubmedqa"):
        assert sorted(vllm_run.summary["answerer"][benchmark]) == sorted(reference_run.summary["answerer"][benchmark])
    assert sorted(vllm_run.metrics()) == sorted(reference_run.metrics())
    assert sorted(json.loads(Path(vllm_run.paths["json"]).read_text())) == sorted(json.loads(Path(reference_run.paths["json"]).read_text()))


def test_greedy_answers_agree_with_the_transformers_backend_in_float32(engine, reference):
    """Chat prompts (where the answerer was trained) and plain-text ones (where it continues as a random model
    would), 24 greedy tokens each, and the one-token letter pass: measured on this build, every completion
    and every letter is the same."""
    items = [MCQItem(id=f"g{i}", stem=f"Case {i}: a child with seizures, ataxia and finding {i}. Which gene?",
                     options={"A": "SCN1A", "B": "MECP2", "C": "ATXN1", "D": "FMR1"}) for i in range(12)]
    from medssr.prompts import build_prompt

    prompts = [build_prompt(item, "chat") for item in items] + [build_prompt(item, "text") for item in items]
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    ours, theirs = ([out[0] for out in generator.generate(prompts, n=1, sampling=greedy)] for generator in (engine, reference))
    tokens = [(engine.tokenizer.encode(a, add_special_tokens=False), engine.tokenizer.encode(b, add_special_tokens=False))
              for a, b in zip(ours, theirs)]
    same_tokens = sum(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) for a, b in tokens)
    share = same_tokens / max(1, sum(max(len(a), len(b)) for a, b in tokens))
    identical = sum(a == b for a, b in zip(ours, theirs)) / len(prompts)
    print(f"greedy agreement: {identical:.0%} of {len(prompts)} completions identical, {share:.1%} of tokens before a difference")
    assert identical >= 0.9 and share >= 0.95, list(zip(ours, theirs))
    letters = SamplingParams(temperature=0.0, max_tokens=1, allowed_letters=("A", "B", "C", "D"))
    assert engine.generate(prompts, sampling=letters) == reference.generate(prompts, sampling=letters)


def test_settings_reach_the_engine_and_a_seeded_request_runs_on_the_engines_seed(engine, answerer):
    import vllm

    from medssr.generation.vllm_backend import ENGINE_SEED, engine_arguments

    running = engine.llm.llm_engine.vllm_config
    assert (running.parallel_config.tensor_parallel_size, running.cache_config.gpu_memory_utilization) == (1, 0.07)
    assert (running.cache_config.kv_cache_memory_bytes, running.model_config.seed) == (1 << 28, ENGINE_SEED)
    assert str(running.model_config.dtype) == "torch.float32" and running.model_config.enforce_eager
    assert running.device_config.device_type == ("cpu" if engine.cpu else "cuda")
    # Two tensor-parallel workers need a NUMA node each on this CPU (or two GPUs), so tp=2 is read back from the
    # configuration vLLM builds from the same arguments, without starting it.
    split = engine_arguments(GeneratorConfig(backend="vllm", model=str(answerer), tensor_parallel_size=2, gpu_memory_utilization=0.5), engine.cpu)
    built = vllm.EngineArgs(**split).create_engine_config()
    assert (built.parallel_config.tensor_parallel_size, built.cache_config.gpu_memory_utilization) == (2, 0.5)
    # On the CPU build dtype auto is what medssr's CPU generation resolves it to, and a GPU device is refused.
    from medssr.generation.transformers_backend import resolve_dtype

    cpu = engine_arguments(GeneratorConfig(backend="vllm", model=str(answerer)), cpu=True)
    assert cpu["dtype"] == str(resolve_dtype("auto", "cpu")).removeprefix("torch.")
    with pytest.raises(ValueError, match="this is vLLM's CPU build"):
        engine_arguments(GeneratorConfig(backend="vllm", model=str(answerer), device="cuda"), cpu=True)
    with pytest.raises(ValueError, match="this is vLLM's CUDA build"):
        engine_arguments(GeneratorConfig(backend="vllm", model=str(answerer), device="cpu"), cpu=False)

    # A request's seed would kill the CPU engine: there it is not passed (on a GPU it is), and the call samples.
    seeded = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_tokens=6, seed=3)
    assert ("seed" in engine.sampling_options(2, seeded)) == (not engine.cpu)
    (samples,) = engine.generate(["The answer is"], n=2, sampling=seeded)
    assert len(samples) == 2


def test_an_engine_killed_mid_run_is_reported_with_its_cause_and_leaves_no_process(engine):
    """Last in the file: it kills the module's engine."""
    from medssr.generation.vllm_backend import VLLMEngineError

    (core,) = engine_processes(engine)
    engine_tree = process_tree(core)
    assert len(engine_tree) >= 2, "the engine core and its worker"
    os.kill(core, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(VLLMEngineError) as died:
        for _ in range(20):  # until the client has seen the process end
            engine.generate(["The answer is"], sampling=SamplingParams(temperature=0.0, max_tokens=4))
            time.sleep(0.5)
    assert time.monotonic() - started < 60
    message = str(died.value)
    assert f"vLLM's engine for {engine.model} died" in message and f"pid {core}: exit code -9" in message and "\n" not in message
    deadline = time.monotonic() + 30
    while engine_tree & alive_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not engine_tree & alive_processes(), f"engine processes left: {engine_tree & alive_processes()}"


def alive_processes() -> set[int]:
    return {int(pid) for pid in subprocess.run(["ps", "-eo", "pid="], capture_output=True, text=True, check=True).stdout.split()}
