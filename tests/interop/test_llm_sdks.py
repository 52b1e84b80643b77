"""The official OpenAI and Anthropic Python SDKs, pointed at Palisade in front of the mock model:
what comes through the gateway must equal what the mock returns directly."""

import anthropic
import openai
import pytest

from conftest import CI_KEY, Gateway, start_mock

PROMPT = "Summarise the quarterly report in one line."


def oai(base, key=CI_KEY):
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=20)


def ant(base, key=CI_KEY):
    return anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=20)


def test_openai_chat_plain_and_streamed_match_the_mock(gateway, mock):
    direct = oai(mock, key="unused").chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": PROMPT}]
    )
    via = oai(gateway.proxy_url("oai")).chat.completions.create(
        model="mock-gpt", messages=[{"role": "user", "content": PROMPT}]
    )
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens
    assert via.usage.completion_tokens == direct.usage.completion_tokens

    stream = oai(gateway.proxy_url("oai")).chat.completions.create(
        model="mock-gpt",
        messages=[{"role": "user", "content": PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == direct.choices[0].message.content
    assert usage.completion_tokens == direct.usage.completion_tokens


def test_openai_responses_embeddings_and_models(gateway, mock):
    c = oai(gateway.proxy_url("oai"))
    direct = oai(mock, key="unused").responses.create(model="mock-gpt", input=PROMPT)
    r = c.responses.create(model="mock-gpt", input=PROMPT)
    assert r.output_text == direct.output_text
    assert r.usage.input_tokens == direct.usage.input_tokens

    streamed = ""
    with c.responses.stream(model="mock-gpt", input=PROMPT) as s:
        for event in s:
            if event.type == "response.output_text.delta":
                streamed += event.delta
        final = s.get_final_response()
    assert streamed == direct.output_text
    assert final.usage.output_tokens == direct.usage.output_tokens

    e = c.embeddings.create(model="mock-embed", input=["alpha", "beta"])
    d = oai(mock, key="unused").embeddings.create(model="mock-embed", input=["alpha", "beta"])
    assert [x.embedding for x in e.data] == [x.embedding for x in d.data]

    ids = [m.id for m in c.models.list()]
    assert "mock-gpt" in ids


def test_anthropic_messages_plain_and_streamed_match_the_mock(gateway, mock):
    direct = ant(mock, key="unused").messages.create(
        model="mock-claude", max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
    )
    c = ant(gateway.proxy_url("ant"))
    via = c.messages.create(model="mock-claude", max_tokens=64, messages=[{"role": "user", "content": PROMPT}])
    assert via.content[0].text == direct.content[0].text
    assert via.usage.input_tokens == direct.usage.input_tokens

    with c.messages.stream(model="mock-claude", max_tokens=64, messages=[{"role": "user", "content": PROMPT}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == direct.content[0].text
    assert final.usage.output_tokens == direct.usage.output_tokens


def test_bad_keys_are_refused_in_each_api_shape(gateway):
    with pytest.raises(openai.AuthenticationError) as e:
        oai(gateway.proxy_url("oai"), key="pal_wrong_key_000000000000000000").chat.completions.create(
            model="mock-gpt", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 401
    assert e.value.body["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError) as e:
        ant(gateway.proxy_url("ant"), key="pal_wrong_key_000000000000000000").messages.create(
            model="mock-claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 401


def test_request_log_shows_each_call_with_tokens(gateway):
    c = oai(gateway.proxy_url("oai"))
    before = gateway.call("GET", "/api/v1/requests?proxy=oai&endpoint=chat_completions&limit=1")["total"]
    r = c.chat.completions.create(model="mock-gpt", messages=[{"role": "user", "content": "count me"}])
    rid = r._request_id
    assert rid
    rows = gateway.requests("proxy=oai&endpoint=chat_completions&limit=500", before + 1)
    row = next(x for x in rows if x["id"] == rid)
    assert row["status"] == 200
    assert row["key_name"] == "ci" and row["group"] == "engineering"
    assert row["prompt_tokens"] == r.usage.prompt_tokens
    assert row["completion_tokens"] == r.usage.completion_tokens
    assert row["total_tokens"] == r.usage.total_tokens


def test_upstream_killed_mid_stream_raises_in_the_sdk_and_gateway_survives():
    proc, url = start_mock("--chunks", "40", "--chunk-delay-ms", "100")
    gw = Gateway(url)
    try:
        for client_kind in ("openai", "anthropic"):
            if client_kind == "openai":
                stream = oai(gw.proxy_url("oai")).chat.completions.create(
                    model="mock-gpt", messages=[{"role": "user", "content": "long story"}], stream=True
                )
                it = iter(stream)
                next(it)
                if proc.p.poll() is None:
                    proc.stop()
                with pytest.raises(openai.APIError) as e:
                    for _ in it:
                        pass
                assert "upstream" in str(e.value)
            else:
                with pytest.raises((anthropic.APIError, anthropic.APIConnectionError)):
                    ant(gw.proxy_url("ant")).messages.create(
                        model="mock-claude", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
                    )
        # The gateway itself is fine: admin API answers and records the broken stream.
        rows = gw.requests("proxy=oai", 1)
        assert any("upstream" in (r["error"] or "") for r in rows)
    finally:
        proc.stop()
        gw.stop()
