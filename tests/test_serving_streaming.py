"""Streaming, per-step admission and the vote extension: the scheduler on the real tiny model in this
process, then the running model server through the official ``openai`` client."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from medssr.answers import majority_vote
from medssr.generation.base import SamplingParams
from tests.plugins.kserve_server import ANSWER_TEXT, SERVED_NAME
from tests.test_serving import QUESTION, _metric, assert_serving

MESSAGES = [{"role": "user", "content": QUESTION}]
GREEDY = SamplingParams(temperature=0, max_tokens=16)


# ------------------------------------------------------------------------------ scheduler, in process


@pytest.fixture(scope="module")
def tiny_generator(tiny_model):
    import torch

    from medssr.generation import GeneratorConfig, build_generator

    torch.set_num_threads(1)
    return build_generator(GeneratorConfig(model=str(tiny_model), batch_size=8, device="cpu", progress=False))


def _scheduler(generator, admission: str, max_prompts: int = 4, max_queue: int = 16):
    from medssr.generation.step_decoder import StepDecoder
    from medssr.serving.scheduler import DecodeScheduler

    return DecodeScheduler(StepDecoder(generator, max_rows=8), max_prompts, max_queue, admission, max_wait_ms=1)


def _job(scheduler, generator, prompt: str, sampling: SamplingParams, samples: int = 1, min_tokens: int = 0):
    from medssr.generation.step_decoder import DecodeJob

    ids = generator.tokenizer.encode(prompt)
    return DecodeJob(key=scheduler.new_key(), prompt_ids=ids, samples=samples, sampling=sampling, min_tokens=min_tokens)


async def _order_of_events(generator, admission: str) -> list[str]:
    """A long job decoding, a short one submitted after its first token: who reports what, in order."""
    scheduler = _scheduler(generator, admission)
    long_events, short_events = asyncio.Queue(), asyncio.Queue()
    long_sampling = SamplingParams(temperature=0, max_tokens=64)
    scheduler.submit([_job(scheduler, generator, "A patient", long_sampling, min_tokens=64)], long_events)
    await long_events.get()  # it is decoding
    scheduler.submit([_job(scheduler, generator, "The answer is", SamplingParams(temperature=1.0, top_p=1.0, top_k=0,
                                                                                max_tokens=4, seed=3))], short_events)
    order = []

    async def follow(name, events):
        while True:
            delta = await events.get()
            if not order or order[-1] != name:
                order.append(name)
            if delta.finish_reason is not None:
                order.append(f"{name} done")
                return

    await asyncio.gather(follow("long", long_events), follow("short", short_events))
    scheduler.close()
    return order


@pytest.mark.slow  # loads the model in this process
def test_a_request_arriving_mid_decode_joins_at_the_next_step_not_after_the_batch(tiny_generator):
    step = asyncio.run(_order_of_events(tiny_generator, "step"))
    assert step.index("short done") < step.index("long done"), step  # it decoded beside the long one
    whole_batch = asyncio.run(_order_of_events(tiny_generator, "batch"))
    assert whole_batch.index("long done") < whole_batch.index("short"), whole_batch  # the old policy: it waited


@pytest.mark.slow  # loads the model in this process
def test_scheduler_refuses_when_full_and_drops_waiting_prompts_of_clients_that_went_away(tiny_generator):
    from prometheus_client import REGISTRY

    from medssr.serving.scheduler import QueueFull

    abandoned = lambda: REGISTRY.get_sample_value("medssr_serving_abandoned_total") or 0.0  # noqa: E731

    async def scenario():
        scheduler = _scheduler(tiny_generator, "step", max_prompts=1, max_queue=8)
        first = asyncio.Queue()
        scheduler.submit([_job(scheduler, tiny_generator, "A patient", SamplingParams(temperature=0, max_tokens=48),
                               min_tokens=48)], first)
        await first.get()
        waiting = asyncio.Queue()
        tickets = scheduler.submit([_job(scheduler, tiny_generator, f"question {i}", GREEDY) for i in range(8)], waiting)
        with pytest.raises(QueueFull):
            scheduler.submit([_job(scheduler, tiny_generator, "one too many", GREEDY)], asyncio.Queue())
        scheduler.cancel(tickets)  # what a route does when its client disconnects
        finished = 1
        while True:
            delta = await first.get()
            finished += 1
            if delta.finish_reason is not None:
                break
        await asyncio.sleep(0.2)  # the thread looks at the queue again
        scheduler.close()
        return finished, waiting.qsize()

    before = abandoned()
    tokens, waiting_deltas = asyncio.run(scenario())
    assert tokens == 48
    assert waiting_deltas == 0  # the cancelled prompts never reached the model
    assert abandoned() - before == 8


@pytest.mark.slow  # loads the model in this process
def test_cancelling_a_decoding_prompt_stops_its_rows_and_the_thread_serves_the_next(tiny_generator):
    from prometheus_client import REGISTRY

    cancelled_rows = lambda: REGISTRY.get_sample_value("medssr_serving_cancelled_rows_total") or 0.0  # noqa: E731

    async def scenario():
        scheduler = _scheduler(tiny_generator, "step")
        events = asyncio.Queue()
        sampling = SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=64, seed=1)
        tickets = scheduler.submit([_job(scheduler, tiny_generator, "A patient", sampling, samples=3, min_tokens=64)],
                                   events)
        await events.get()
        scheduler.cancel(tickets)
        deadline = time.monotonic() + 30
        while scheduler.decoder.rows and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        rows_left, delivered = scheduler.decoder.rows, events.qsize()
        after = asyncio.Queue()
        scheduler.submit([_job(scheduler, tiny_generator, "The answer is", GREEDY)], after)
        last = await asyncio.wait_for(_last_delta(after), 30)
        scheduler.close()
        return rows_left, delivered, last

    before = cancelled_rows()
    rows_left, delivered, last = asyncio.run(scenario())
    assert rows_left == 0 and cancelled_rows() - before == 3
    assert delivered < 3 * 63, "the cancelled rows decoded on"
    assert not isinstance(last, Exception) and last.finish_reason in ("stop", "length")


async def _last_delta(events: asyncio.Queue):
    while True:
        event = await events.get()
        if isinstance(event, Exception) or event.finish_reason is not None:
            return event


@pytest.mark.slow  # loads the model in this process
def test_a_decode_thread_that_dies_fails_every_prompt_and_later_submits_at_once(tiny_generator):
    from medssr.serving.scheduler import DecoderStopped

    async def scenario():
        scheduler = _scheduler(tiny_generator, "step")
        decoding, waiting = asyncio.Queue(), asyncio.Queue()
        scheduler.submit([_job(scheduler, tiny_generator, "A patient", SamplingParams(temperature=0, max_tokens=64),
                               min_tokens=64)], decoding)
        await decoding.get()

        def broken() -> bool:  # an error where the thread admits, outside the step it guards
            raise MemoryError("no room for the cache")

        scheduler.decoder.can_join = broken
        scheduler.submit([_job(scheduler, tiny_generator, "The answer is", GREEDY)], waiting)
        failures = await asyncio.wait_for(asyncio.gather(_last_delta(decoding), _last_delta(waiting)), 30)
        with pytest.raises(DecoderStopped, match="MemoryError: no room for the cache"):
            scheduler.submit([_job(scheduler, tiny_generator, "later", GREEDY)], asyncio.Queue())
        return failures

    for failure in asyncio.run(scenario()):
        assert isinstance(failure, DecoderStopped) and "MemoryError" in str(failure)


@pytest.mark.slow  # loads the model in this process
def test_a_predictor_whose_decode_thread_died_is_not_ready_and_answers_503(tiny_model):
    from medssr.serving.config import ServeConfig
    from medssr.serving.predictor import MedssrPredictor
    from medssr.serving.protocol import GenerationSettings, PromptJob, RequestError

    predictor = MedssrPredictor(ServeConfig(model=str(tiny_model), device="cpu", torch_threads=1))
    assert predictor.load() and predictor.ready

    def broken() -> bool:
        raise RuntimeError("the cache is corrupt")

    decoder = predictor.scheduler.decoder
    step = decoder.step

    def step_that_fails_once():
        decoder.step = step
        raise RuntimeError("one bad step")

    from medssr.generation.step_decoder import DecodeJob

    greedy = GenerationSettings(n=1, job=DecodeJob(key=None, prompt_ids=[], samples=1, sampling=GREEDY))

    async def scenario():
        one = [PromptJob(prompt="A patient")], greedy
        decoder.step = step_that_fails_once
        with pytest.raises(RequestError) as failed_step:  # a failed step is a 500 for its batch; the thread goes on
            await asyncio.wait_for(predictor.complete(*one), 30)
        assert failed_step.value.status == 500 and "RuntimeError: one bad step" in failed_step.value.message
        assert predictor.ready and (await asyncio.wait_for(predictor.complete(*one), 30))[0].completions[0].finish_reason
        decoder.can_join = broken
        with pytest.raises(RequestError) as met:  # the request that met the death fails, never hangs
            await asyncio.wait_for(predictor.complete([PromptJob(prompt="A patient")], greedy), 30)
        assert met.value.status == 503 and met.value.error_type == "server_error"
        with pytest.raises(RequestError) as refused:
            await predictor.submit([PromptJob(prompt="A patient")], greedy)
        return refused.value

    refused = asyncio.run(scenario())
    assert refused.status == 503 and "RuntimeError: the cache is corrupt" in refused.message
    assert not predictor.ready and not asyncio.run(predictor.healthy())
    predictor.stop()


# ------------------------------------------------------------------------------------ running server


def _client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/openai/v1", api_key="not-needed", max_retries=0)


@pytest.mark.slow
def test_streamed_chat_and_completions_concatenate_to_the_reply(kserve_server):
    client = _client(kserve_server)
    reply = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=16, seed=7)
    stream = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=16, seed=7,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content == ANSWER_TEXT
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage == reply.usage
    assert usage_chunk.model_extra["medssr"]["answer"] == "C"
    assert all(c.usage is None for c in chunks[:-1])

    without_usage = list(client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=16,
                                                        stream=True))
    assert without_usage[-1].choices[0].finish_reason == "stop"
    assert without_usage[-1].model_extra["medssr"]["answer"] == "C"  # the letter comes in the final chunk

    prompts = ["The answer is", "A patient with ataxia"]
    settings = dict(model=SERVED_NAME, prompt=prompts, max_tokens=12, n=2, temperature=1.0, top_p=1.0, seed=11)
    whole = client.completions.create(**settings)
    streamed: dict[int, str] = {}
    finishes = {}
    for chunk in client.completions.create(**settings, stream=True, stream_options={"include_usage": True}):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
        if chunk.usage:
            assert chunk.usage == whole.usage
    assert streamed == {c.index: c.text for c in whole.choices}
    assert finishes == {c.index: c.finish_reason for c in whole.choices}
    cut = client.completions.create(model=SERVED_NAME, prompt="The answer is", max_tokens=16, temperature=1.0,
                                    top_p=1.0, seed=3, stop=["e", "a"], stream=True)
    assert not any(ch in "".join(c.choices[0].text for c in cut if c.choices) for ch in "ea")


@pytest.mark.slow
def test_a_client_that_disconnects_mid_stream_leaves_no_rows_decoding(kserve_server):
    metrics = lambda: httpx.get(f"{kserve_server.url}/metrics", timeout=10).text  # noqa: E731
    before = metrics()
    stream = _client(kserve_server).chat.completions.create(
        model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=256, stream=True, extra_body={"min_tokens": 256}
    )
    for _, _ in zip(range(3), stream):  # the role chunk and two pieces of text: it is decoding
        pass
    stream.close()
    deadline = time.monotonic() + 60
    while _metric(metrics(), "medssr_serving_cancelled_rows_total") < _metric(before, "medssr_serving_cancelled_rows_total") + 1:
        assert time.monotonic() < deadline, "the row of the closed stream was never stopped"
        time.sleep(0.1)
    after = metrics()
    assert _metric(after, "medssr_serving_decoding_rows") == 0
    generated = _metric(after, "medssr_serving_generated_tokens_total") - _metric(before, "medssr_serving_generated_tokens_total")
    assert generated < 256  # stopped, not decoded to its end
    assert_serving(kserve_server)


@pytest.mark.slow
def test_a_request_arriving_mid_stream_shares_forward_passes_with_it(kserve_server):
    metrics = lambda: httpx.get(f"{kserve_server.url}/metrics", timeout=10).text  # noqa: E731
    shared = lambda text: _metric(text, "medssr_serving_step_rows_count") - _metric(text, 'medssr_serving_step_rows_bucket{le="1.0"}')  # noqa: E731
    client = _client(kserve_server)
    long = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=256,
                                          stream=True, extra_body={"min_tokens": 256})
    chunks = iter(long)
    next(chunks), next(chunks)  # decoding
    before = metrics()
    short = client.completions.create(model=SERVED_NAME, prompt="The answer is", max_tokens=8, temperature=0,
                                      extra_body={"min_tokens": 8})
    during = metrics()
    rest = list(chunks)
    assert rest[-1].choices[0].finish_reason == "length"  # the long one was still decoding when the short one ended
    assert short.usage.completion_tokens == 8
    assert shared(during) - shared(before) >= 8  # each of the short one's steps decoded both rows


@pytest.mark.slow
def test_vote_extension_returns_agreement_and_abstains_below_the_threshold(kserve_server):
    client = _client(kserve_server)
    agreed = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=16,
                                            extra_body={"medssr": {"n": 4, "abstain_below": 0.6}})
    vote = agreed.model_extra["medssr"]
    assert len(agreed.choices) == 4
    assert vote["votes"] == {"C": 4} and vote["agreement"] == 1.0 and vote["parsed"] == 4
    assert vote["answer"] == vote["majority"] == "C" and vote["abstained"] is False

    # Cut before the letter: no sample states one, agreement is 0, the reply abstains.
    unread = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=16, stop=["C"],
                                            extra_body={"medssr": {"n": 3, "abstain_below": 0.5}})
    vote = unread.model_extra["medssr"]
    assert vote["answers"] == [None] * 3 and vote["agreement"] == 0.0
    assert vote["abstained"] is True and vote["answer"] is None

    sampled = client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, n=4, temperature=1.5, top_p=1.0,
                                             seed=5, max_tokens=16, extra_body={"medssr": {"abstain_below": 0.99}})
    vote = sampled.model_extra["medssr"]
    expected = majority_vote(vote["answers"])  # the vote labelling uses
    assert (vote["majority"], vote["agreement"], vote["votes"]) == (expected.label, expected.agreement, expected.votes)
    assert vote["abstained"] == (expected.agreement < 0.99)
    assert vote["answer"] == (None if vote["abstained"] else expected.label)

    streamed = list(client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, temperature=0, max_tokens=16,
                                                   stream=True, extra_body={"medssr": {"n": 2, "abstain_below": 0.6}}))
    assert streamed[-1].model_extra["medssr"]["votes"] == {"C": 2}
