"""The vote's ``permute_options``, in process: each choice's prompt is the question with its options in the order
``medssr.answers.option_orders`` gives (seeded, reproducible), rendered as labelling renders it, and each choice's
letter is mapped back to the question's before the vote. The running servers' side is in test_serving_openai.py."""

from __future__ import annotations

import asyncio

import pytest

from medssr.answers import option_orders
from medssr.data import MCQItem
from medssr.generation.base import SamplingParams
from medssr.generation.step_decoder import DecodeJob, Delta
from medssr.prompts import build_prompt, shown_item
from medssr.serving.config import ServeConfig
from medssr.serving.engine import Ticket
from medssr.serving.protocol import RequestError, chat_job, completion_jobs, instance_job, permuted_jobs, settings_from_request
from medssr.serving.run import RequestRun
from tests.test_serving import QUESTION, completion_request

CONFIG = ServeConfig(model="m", max_n=8)
ITEM = MCQItem(id="request", stem="Which enzyme is deficient in Fabry disease?",
               options={"A": "Alpha-galactosidase A", "B": "Glucocerebrosidase", "C": "Hexosaminidase A", "D": "Arylsulfatase A"})


def permuted_settings(n: int = 4, seed: int | None = None, **fields):
    extension = {"n": n, "permute_options": True, **({"permutation_seed": seed} if seed is not None else {})}
    return settings_from_request(completion_request(medssr=extension, **fields), CONFIG)


def test_each_choice_is_asked_the_question_in_its_seeded_order_as_labelling_renders_it():
    (job,) = permuted_jobs([instance_job({"question": ITEM.stem, "options": list(ITEM.options.values())}, 0)],
                           permuted_settings(seed=7), "instances")
    assert job.orders == tuple(option_orders("ABCD", 4, 7, ITEM.render()))
    # Every option at every position once over the four choices: no position can win the vote.
    assert all(sorted(order[position] for order in job.orders) == list("ABCD") for position in range(4))
    assert job.engine_prompts() == [build_prompt(shown_item(ITEM, order), "chat") for order in job.orders]

    chat = chat_job([{"role": "system", "content": "Answer with one letter."}, {"role": "user", "content": ITEM.render()},
                     {"role": "assistant", "content": "Thinking."}, {"role": "user", "content": ITEM.render()}])
    (chat,) = permuted_jobs([chat], permuted_settings(seed=7), "messages")
    assert chat.orders == job.orders  # the same question and seed: the same orders, whatever route asked
    for messages, order in zip(chat.engine_prompts(), chat.orders):
        assert messages[:3] == chat.prompt[:3]  # only the question, the last user turn, is re-ordered
        assert messages[3] == {"role": "user", "content": shown_item(ITEM, order).render()}
    (text,) = permuted_jobs(completion_jobs(ITEM.render()), permuted_settings(seed=7), "prompt")
    assert text.engine_prompts() == [shown_item(ITEM, order).render() for order in job.orders]


def test_orders_are_reproducible_by_seed_and_differ_between_seeds():
    def orders(seed: int | None, question: str = QUESTION):
        return permuted_jobs(completion_jobs(question), permuted_settings(n=8, seed=seed), "prompt")[0].orders

    assert orders(3) == orders(3) and len(orders(3)) == 8
    assert orders(3) != orders(4)
    assert orders(None) == orders(0)  # the default seed
    assert orders(3) != orders(3, ITEM.render())  # seeded with the question too: each question its own orders
    assert permuted_settings().permutation_seed == 0
    assert settings_from_request(completion_request(medssr={"n": 4}), CONFIG).permutation_seed is None


def test_a_seeded_request_draws_each_permuted_choice_from_its_own_seed():
    settings = settings_from_request(completion_request(seed=11, temperature=1.0, medssr={"n": 3, "permute_options": True}), CONFIG)
    jobs = [settings.sample_job(choice, orders=(("A", "B"),) * 3) for choice in range(3)]
    assert [job.samples for job in jobs] == [1, 1, 1]
    assert [job.sampling.seed for job in jobs] == [11, 12, 13]
    assert settings.sample_job(0, orders=()) is settings.job  # unpermuted: one job of n samples


def run_to_end(jobs, settings, texts: list[list[str]]):
    """A RequestRun fed each engine prompt's completion as one delta, then its results."""
    tickets = [Ticket(DecodeJob(key=key, prompt_ids=[1, 2, 3], samples=1, sampling=SamplingParams()), None)
               for key in range(sum(len(prompt) for prompt in texts))]
    events: asyncio.Queue = asyncio.Queue()
    for ticket, text in zip(tickets, [text for prompt in texts for text in prompt]):
        events.put_nowait(Delta(key=ticket.job.key, sample=0, text=text, tokens=4, finish_reason="stop"))
    run = RequestRun(None, jobs, tickets, settings, events)

    async def drain():
        return [(prompt, choice) async for prompt, choice, _ in run.stream()]

    return asyncio.run(drain()), run.results()


def test_each_choice_s_letter_counts_for_the_option_it_chose_in_the_question_s_letters():
    settings = permuted_settings(n=4, seed=2)
    (job,) = permuted_jobs([instance_job({"question": ITEM.stem, "options": ITEM.options}, 0)], settings, "instances")
    # Choice 0 says C: the option its order put at C. Choice 1 names an option by the text it saw at B.
    texts = ["The answer is C.", f"Answer: {ITEM.options[job.orders[1][1]]}", "No idea.", "The answer is B."]
    streamed, (result,) = run_to_end([job], settings, [texts])
    assert streamed == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert [c.text for c in result.completions] == texts
    assert [c.shown_answer for c in result.completions] == ["C", "B", None, "B"]
    expected = [job.orders[0][2], job.orders[1][1], None, job.orders[3][1]]
    assert [c.answer for c in result.completions] == expected
    summary = result.answer_summary()
    assert summary["answers"] == expected and summary["letters"] == "ABCD" and summary["parsed"] == 3
    assert summary["permutation"] == {"seed": 2, "orders": ["".join(order) for order in job.orders],
                                      "shown_answers": ["C", "B", None, "B"]}
    assert result.prompt_tokens == 4 * 3  # each choice read its own prompt

    # "C" every time, in four orders that put each option at C once: no option wins on position alone.
    _, (result,) = run_to_end([job], settings, [["The answer is C."] * 4])
    summary = result.answer_summary(abstain_below=0.5)
    assert summary["votes"] == {"A": 1, "B": 1, "C": 1, "D": 1} and summary["agreement"] == 0.25
    assert summary["majority"] is None and summary["abstained"] is True
    unpermuted = settings_from_request(completion_request(medssr={"n": 4}), CONFIG)
    _, (plain,) = run_to_end([instance_job({"question": ITEM.stem, "options": ITEM.options}, 0)], unpermuted,
                             [["The answer is C."]])  # one sample given to every choice, as greedy decoding does
    assert plain.answer_summary()["votes"] == {"C": 4} and "permutation" not in plain.answer_summary()


def test_permutation_without_a_question_to_re_order_is_a_400_naming_the_field():
    settings = permuted_settings()
    for jobs, param, where in [(completion_jobs("What causes ataxia?"), "prompt", "'prompt'"),
                               (completion_jobs([QUESTION, "hello"]), "prompt", "'prompt[1]'"),
                               (completion_jobs([5, 6, 7]), "prompt", "'prompt'"),
                               ([chat_job([{"role": "user", "content": "hello"}])], "messages", "'messages'")]:
        with pytest.raises(RequestError) as refused:
            permuted_jobs(jobs, settings, param)
        assert (refused.value.status, refused.value.param) == (400, "medssr.permute_options"), jobs
        assert where in refused.value.message and "'A. ...'" in refused.value.message
    for fields, param in [({"medssr": {"permutation_seed": 3}}, "medssr.permutation_seed"),
                          ({"medssr": {"permute_options": True}, "echo": True}, "echo"),
                          ({"medssr": {"permute_options": "sometimes"}}, "medssr.permute_options"),
                          ({"medssr": {"permute_options": True, "permutation_seed": -1}}, "medssr.permutation_seed")]:
        with pytest.raises(RequestError) as refused:
            settings_from_request(completion_request(**fields), CONFIG)
        assert (refused.value.status, refused.value.param) == (400, param), fields
