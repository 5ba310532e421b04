"""The serving tests of the transformers engine, run again on vLLM's engine (its CPU build, `engine=vllm`):
the same test functions, imported here, against a model server of this module's own (`ENGINE` below; the
`kserve_server` fixture reads it). What the server promises does not depend on the engine: the OpenAI
contract, streaming, the vote, the limits, 4xx with reasons, a client that goes away, an engine that dies.
Tests of the transformers engine's own scheduling (rows per forward pass, the waiting queue) stay there."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.plugins.kserve_server import SERVED_NAME
from tests.test_serving import (  # noqa: F401 - collected here, on this module's server
    test_a_20_mb_body_gets_413_before_it_is_read_and_health_answers_meanwhile,
    test_every_bad_request_gets_its_4xx_and_the_server_stays_up,
    test_kserve_v1_and_v2_protocols,
    test_odd_text_and_out_of_range_seeds_get_400_naming_the_field,
    test_openai_client_chat_completion_with_answer_letter,
    test_openai_client_completions_and_models,
    test_overload_is_refused_with_429_not_queued,
)
from tests.test_serving_openai import (  # noqa: F401
    client,
    reference,
    test_chat_logprobs_and_their_stream_match_the_reply,
    test_logit_bias_forces_and_bans_tokens,
    test_models_retrieve_and_the_developer_role,
    test_penalties_change_greedy_decoding_exactly_as_defined,
    test_permute_options_asks_each_sample_its_own_order_and_votes_in_the_question_s_letters,
    test_token_prompt_with_echo_scores_every_prompt_token_as_the_forward_pass_does,
    test_v2_metadata_lists_the_tensors,
    test_what_the_server_cannot_honour_is_refused_naming_the_field,
)
from tests.test_serving_streaming import (  # noqa: F401
    MESSAGES,
    test_a_client_that_disconnects_mid_stream_leaves_no_rows_decoding,
    test_streamed_chat_and_completions_concatenate_to_the_reply,
    test_vote_extension_returns_agreement_and_abstains_below_the_threshold,
)

ENGINE = "vllm"
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_an_engine_that_dies_makes_the_server_not_ready_and_requests_503(kserve_server):
    """vLLM's engine core process killed (as the kernel's OOM killer would): readiness turns false, and a
    request gets 503 with the reason instead of hanging. Last in this module: the server does not recover."""
    import openai
    import psutil

    (core,) = [child for child in psutil.Process(kserve_server.pid).children(recursive=True)
               if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name()]
    core.kill()
    deadline = time.monotonic() + 60
    while httpx.get(f"{kserve_server.url}/v2/health/ready", timeout=10).status_code == 200:
        assert time.monotonic() < deadline, "still ready a minute after the engine died"
        time.sleep(0.5)
    openai_client = openai.OpenAI(base_url=f"{kserve_server.url}/openai/v1", api_key="not-needed", max_retries=0)
    with pytest.raises(openai.APIStatusError) as refused:
        openai_client.chat.completions.create(model=SERVED_NAME, messages=MESSAGES, max_tokens=4)
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "1"
    assert kserve_server.alive()  # the process stays up to answer probes; Kubernetes restarts the pod
