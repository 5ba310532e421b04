"""lm-evaluation-harness (its PyPI package, `local-completions`: token-id prompts, echo with logprobs) runs a
multiple_choice task and a generate_until task end to end against the running model server, from task files of
our own over a benchmark in the reference format (MedQA from the benchmarks folder). The loglikelihoods it gets
are the model's own (checked against its forward pass), and its generations are the server's replies."""

from __future__ import annotations

import json

import pytest

from tests.plugins.kserve_server import SERVED_NAME

pytestmark = pytest.mark.slow
QUESTIONS = 6
MAX_LENGTH = 256  # lm-eval's context limit, the server's max_prompt_tokens (tests/plugins/kserve_server.py)
TASKS = {
    "medqa_letters": {  # scored by the loglikelihood of each letter after the question
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}\nAnswer:",
        "doc_to_choice": "{{letters}}",
        "doc_to_target": "{{letters.index(gold)}}",
        "metric_list": [{"metric": "acc"}],
    },
    "medqa_reply": {  # the model's reply to the question as a chat turn, its first letter read by a filter
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{gold}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 16, "do_sample": False, "temperature": 0},
        "filter_list": [{"name": "letter", "filter": [{"function": "regex", "regex_pattern": "\\b([A-D])\\b"},
                                                     {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match"}],
    },
}


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    """Task files over a JSONL of the first MedQA questions, read from the reference file with the project's reader."""
    import yaml

    from medssr.data import read_reference_benchmark
    from medssr.locations import benchmarks_dir

    folder = tmp_path_factory.mktemp("lm-eval-tasks")
    records = read_reference_benchmark(benchmarks_dir() / "test_short_medqa.json").records[:QUESTIONS]
    data = folder / "medqa.jsonl"
    data.write_text("".join(json.dumps({"question": r.render(), "gold": r.answer, "letters": list(r.options)}) + "\n"
                            for r in records))
    for name, task in TASKS.items():
        spec = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
                "test_split": "test", **task}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def test_lm_eval_runs_a_multiple_choice_and_a_generate_until_task_against_the_server(kserve_server, answering_model,
                                                                                   task_folder, tmp_path, monkeypatch):
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    model_args = {"model": SERVED_NAME, "base_url": f"{kserve_server.url}/openai/v1/completions",
                  "tokenizer_backend": "huggingface", "tokenizer": str(answering_model), "max_length": MAX_LENGTH,
                  "num_concurrent": 4, "max_retries": 1, "timeout": 120}
    results = {}
    for name in TASKS:  # the chat template for the reply task only (the letters task scores plain text)
        results[name] = lm_eval.simple_evaluate(
            model="local-completions", model_args=model_args, tasks=[name], task_manager=TaskManager(include_path=str(task_folder)),
            limit=QUESTIONS, log_samples=True, apply_chat_template=name == "medqa_reply", random_seed=0, numpy_random_seed=0,
            torch_random_seed=0, fewshot_random_seed=0,
        )

    letters = results["medqa_letters"]
    assert 0.0 <= letters["results"]["medqa_letters"]["acc,none"] <= 1.0
    samples = letters["samples"]["medqa_letters"]
    assert len(samples) == QUESTIONS and all(len(s["resps"]) == len(s["doc"]["letters"]) for s in samples)
    # The loglikelihoods are the model's: its forward pass over context + letter (the context cut on the left to
    # lm-eval's max_length - 1 tokens), summed over the letter's tokens.
    tokenizer = AutoTokenizer.from_pretrained(answering_model)
    model = AutoModelForCausalLM.from_pretrained(answering_model, dtype=torch.float32).eval()
    for (context, continuation), response in zip(samples[0]["arguments"], samples[0]["resps"]):
        whole = tokenizer.encode(context + continuation, add_special_tokens=False)
        letter = len(whole) - len(tokenizer.encode(context, add_special_tokens=False))
        kept = whole[-(MAX_LENGTH - 1):]
        with torch.inference_mode():
            logprobs = model(input_ids=torch.tensor([kept])).logits[0].float().log_softmax(-1)
        expected = sum(float(logprobs[i - 1, kept[i]]) for i in range(len(kept) - letter, len(kept)))
        assert response[0][0] == pytest.approx(expected, abs=1e-3)

    reply = results["medqa_reply"]
    samples = reply["samples"]["medqa_reply"]
    assert [s["resps"][0][0] for s in samples] == ["The answer is C."] * QUESTIONS  # what the model answers to a chat turn
    assert [s["filtered_resps"][0] for s in samples] == ["C"] * QUESTIONS
    golds = [s["doc"]["gold"] for s in samples]
    assert reply["results"]["medqa_reply"]["exact_match,letter"] == pytest.approx(golds.count("C") / QUESTIONS)
