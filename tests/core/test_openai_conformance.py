"""Conformance of the OpenAI-compatible API (issue 19): huge inputs refused without
freezing the server, failures a client can recover from, OpenAI's error shape, and the
smaller details the official ``openai`` SDK relies on. Against uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import openai
import pytest

from core import hookimpl
from core.app import MAX_BODY_BYTES, create_app
from core.context import CHARS_PER_TOKEN
from core.events import MessageCompleted
from core.protocols import ChatMessage, Delta, GenerationParams
from tests.chat_support import (
    LOCAL,
    LOCAL_NAME,
    OPENAI,
    AuthPlugin,
    HeaderAuthenticator,
    StandIn,
    plugin_object,
)

SAY_HI = [{"role": "user", "content": "Say hi."}]


class GatedModel:
    """An LLM provider whose tokenizer, given more than a short text, holds until
    released (as a real tokenizer busy with megabytes does) and records the length of
    every text it was asked to count. One token per word."""

    name = "gated"
    context_window = 2048

    def __init__(self) -> None:
        self.busy = threading.Event()
        self.release = threading.Event()
        self.counted: list[int] = []

    def count_tokens(self, text: str) -> int:
        self.counted.append(len(text))
        if len(text) > 1000:
            self.busy.set()
            self.release.wait(30)
        return len(text.split())

    async def stream(self, messages: Sequence[ChatMessage], params: GenerationParams
                     ) -> AsyncIterator[Delta]:
        yield Delta("gated says hi", "stop")

    async def aclose(self) -> None:
        return None

    @hookimpl
    def register_llm_providers(self, register: Any, runtime: Any) -> None:
        register(self)


def upstream_server(make_config: Any, live_server: Any, standin: StandIn, **settings: Any
                    ) -> Any:
    values = {"base_url": standin.url, "model": "m", "attempts": 1, "read_timeout": 5.0}
    values.update(settings)
    return live_server(create_app(make_config(plugins={"openai-llm": values}),
                                  candidates=[OPENAI]))


def conversations(server: Any) -> list[dict[str, Any]]:
    return httpx.get(server.url + "/api/conversations").json()  # type: ignore[no-any-return]


# -- (1) big inputs ----------------------------------------------------------------------

def test_a_huge_message_is_counted_off_the_event_loop_and_only_in_part(
    make_config: Any, live_server: Any
) -> None:
    model = GatedModel()
    server = live_server(create_app(make_config(), candidates=[plugin_object("gated", model)]))
    body = {"messages": [{"role": "user", "content": "word " * 1_000_000}]}  # 5 MB
    answer: dict[str, httpx.Response] = {}
    sender = threading.Thread(target=lambda: answer.update(
        big=httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)))
    sender.start()
    try:
        assert model.busy.wait(30), "the tokenizer was never asked"
        # The tokenizer is busy with the huge message right now; the server still answers.
        health = httpx.get(server.url + "/health", timeout=15)
        small = httpx.post(server.url + "/api/conversations", json={"title": "t"}, timeout=15)
        assert health.status_code == 200 and small.status_code == 201
    finally:
        model.release.set()
        sender.join(60)
    refused = answer["big"]
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "context_length_exceeded", "messages", "invalid_request_error")
    assert "5000000 characters" in error["message"]
    # Counted in part: a prefix a few times the window, never the 5 MB.
    assert sum(model.counted) <= (model.context_window + 1) * CHARS_PER_TOKEN


def test_5_and_20_megabyte_messages_are_413s_with_openai_errors(
    client: openai.OpenAI, server: Any
) -> None:
    with pytest.raises(openai.APIStatusError) as five:
        client.chat.completions.create(model=LOCAL_NAME, messages=[
            {"role": "user", "content": "lorem ipsum " * 440_000}])
    assert five.value.status_code == 413 and five.value.code == "context_length_exceeded"
    twenty = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                        json={"messages": [{"role": "user", "content": "x" * (20 << 20)}]})
    assert twenty.status_code == 413
    error = twenty.json()["error"]
    assert error["code"] == "request_too_large" and str(MAX_BODY_BYTES) in error["message"]
    # The server is fine afterwards, and nothing was stored.
    assert client.chat.completions.create(model=LOCAL_NAME, messages=SAY_HI, max_tokens=4)
    assert conversations(server) == []


def test_a_huge_history_is_dropped_not_counted_whole(make_config: Any, live_server: Any) -> None:
    model = GatedModel()
    model.release.set()
    server = live_server(create_app(make_config(), candidates=[plugin_object("gated", model)]))
    history = [{"role": "user", "content": "old " * 500_000},
               {"role": "assistant", "content": "noted"},
               {"role": "user", "content": "hi"}]
    reply = httpx.post(server.url + "/v1/chat/completions", json={"messages": history},
                       timeout=60)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "gated says hi"
    assert sum(model.counted) <= 3 * (model.context_window + 1) * CHARS_PER_TOKEN


# -- (2) failures a client can recover from -------------------------------------------------

def test_bad_stream_options_are_a_400_before_the_model_or_storage(
    make_config: Any, live_server: Any, standin: StandIn
) -> None:
    server = upstream_server(make_config, live_server, standin)
    url = server.url + "/v1/chat/completions"
    for options in ("yes", [1], {"include_usage": "yes"}, {"usage": True}):
        response = httpx.post(url, headers={"X-Mami-Conversation": "new"}, json={
            "messages": SAY_HI, "stream": True, "stream_options": options})
        assert response.status_code == 400, (options, response.text)
        assert response.json()["error"]["param"].startswith("stream_options")
    assert standin.requests == [] and conversations(server) == []


def test_a_failed_stored_turn_names_its_conversation_and_a_retry_resumes_it(
    make_config: Any, live_server: Any, standin: StandIn
) -> None:
    server = upstream_server(make_config, live_server, standin)
    standin.mode = "status500"
    url = server.url + "/v1/chat/completions"
    headers = {"X-Mami-Conversation": "new", "X-Mami-Client-Message-Id": "m1"}
    failed = httpx.post(url, headers=headers, json={"messages": SAY_HI})
    assert failed.status_code == 502
    cid = failed.headers["x-mami-conversation"]
    assert failed.json()["error"]["conversation_id"] == cid
    assert [c["id"] for c in conversations(server)] == [cid]
    standin.mode = "ok"
    retried = httpx.post(url, headers=headers, json={"messages": SAY_HI})
    assert retried.status_code == 200 and retried.headers["x-mami-conversation"] == cid
    stored = httpx.get(f"{server.url}/api/conversations/{cid}/messages").json()
    assert [(m["role"], m["status"]) for m in stored] == [("user", "complete"),
                                                          ("assistant", "complete")]


def test_the_sdks_own_retries_never_make_orphan_conversations(
    make_config: Any, live_server: Any, standin: StandIn
) -> None:
    server = upstream_server(make_config, live_server, standin)
    standin.mode = "status503"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=2)
    # Without a client message id a retry would store the message again: not retried.
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model="m", messages=SAY_HI,
                                       extra_headers={"X-Mami-Conversation": "new"})
    assert err.value.status_code == 502 and len(standin.requests) == 1
    (conversation,) = conversations(server)
    assert err.value.response.headers["x-mami-conversation"] == conversation["id"]
    assert isinstance(err.value.body, dict)
    assert err.value.body["conversation_id"] == conversation["id"]
    # With one, the SDK retries (3 attempts) into the same conversation.
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="m", messages=SAY_HI, metadata={"conversation_id": "new",
                                                  "client_message_id": "c1"})
    assert len(standin.requests) == 4 and len(conversations(server)) == 2


class GatedRecorder:
    """A ``message_completed`` handler that holds until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.events: list[MessageCompleted] = []

    @hookimpl
    async def message_completed(self, event: MessageCompleted, runtime: Any) -> None:
        await asyncio.to_thread(self.release.wait, 20)
        self.events.append(event)


def test_a_non_streaming_reply_is_sent_before_after_reply_work(
    make_config: Any, live_server: Any, standin: StandIn
) -> None:
    recorder = GatedRecorder()
    config = make_config(plugins={"openai-llm": {"base_url": standin.url, "model": "m"}})
    server = live_server(create_app(config, candidates=[OPENAI,
                                                        plugin_object("gate", recorder)]))
    reply = httpx.post(server.url + "/v1/chat/completions", timeout=15,
                       headers={"X-Mami-Conversation": "new"}, json={"messages": SAY_HI})
    assert reply.status_code == 200
    assert recorder.events == []  # the event is still waiting for the test
    recorder.release.set()
    for _ in range(200):
        if recorder.events:
            break
        threading.Event().wait(0.05)
    assert [e.assistant_text for e in recorder.events] == ["Hello from the stand-in."]


# -- (3) error shape --------------------------------------------------------------------------

def test_errors_have_openais_shape_and_sdk_classes(
    make_config: Any, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    authenticator = HeaderAuthenticator(revoked={"nobody"})
    app = create_app(make_config(core={"auth": True}),
                     candidates=[LOCAL, plugin_object("header-auth", AuthPlugin(authenticator))])
    server = live_server(app)
    alice = openai.OpenAI(base_url=server.url + "/v1", api_key="alice", max_retries=0)
    nobody = openai.OpenAI(base_url=server.url + "/v1", api_key="nobody", max_retries=0)
    cases: list[tuple[type[openai.APIStatusError], int, Any]] = [
        (openai.BadRequestError, 400, lambda: alice.chat.completions.create(
            model=LOCAL_NAME, messages=SAY_HI, temperature=9)),
        (openai.AuthenticationError, 401, lambda: nobody.models.list()),
        (openai.NotFoundError, 404, lambda: alice.models.retrieve("gpt-9")),
        (openai.APIStatusError, 413, lambda: alice.chat.completions.create(
            model=LOCAL_NAME, messages=[{"role": "user", "content": "lorem " * 9000}])),
    ]
    for kind, status, call in cases:
        with pytest.raises(kind) as err:
            call()
        assert err.value.status_code == status
        body = err.value.body
        assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
        assert body["code"] is None or isinstance(body["code"], str), body
    assert alice.models.retrieve(LOCAL_NAME).id == LOCAL_NAME


def test_429_and_503_map_to_the_sdks_classes(
    make_config: Any, live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.chat_support import builtin

    monkeypatch.setenv("MAMI_SIGNING_KEY", "k" * 48)
    config = make_config(core={"auth": True},
                         plugins={"token-ws-auth": {"max_failed_attempts": 1}})
    server = live_server(create_app(config, candidates=[
        builtin("token-ws-auth", "plugins.token_ws_auth")]))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        client.models.list()
    assert limited.value.type == "rate_limit_error" and limited.value.code in (
        None, "rate_limit_exceeded")
    open_server = live_server(create_app(make_config(), candidates=[]))
    anyone = openai.OpenAI(base_url=open_server.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as unavailable:
        anyone.chat.completions.create(model="", messages=SAY_HI)
    assert unavailable.value.status_code == 503
    assert unavailable.value.type == "service_unavailable"


def test_an_unknown_or_unsupported_field_is_a_400_naming_it(client: openai.OpenAI) -> None:
    cases = [
        ({"frobnicate": 1}, "frobnicate"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"seed": "abc"}, "seed"),
        ({"user": 5}, "user"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"metadata": {"conversation_id": 7}}, "metadata.conversation_id"),
        ({"metadata": {"tag": ["x"]}}, "metadata.tag"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=LOCAL_NAME, messages=SAY_HI,
                                           extra_body=extra)
        assert err.value.param == param, (extra, err.value.body)
    # What clients commonly send is accepted.
    reply = client.chat.completions.create(
        model=LOCAL_NAME, messages=SAY_HI, max_tokens=4, user="u1", seed=3,
        presence_penalty=0, frequency_penalty=0, n=None, parallel_tool_calls=None,
        tool_choice="none", response_format={"type": "text"}, logprobs=False)
    assert reply.choices[0].message.content


# -- (4) smaller conformance items ---------------------------------------------------------------

def test_n_null_stream_must_be_boolean_and_empty_stop_strings_are_ignored(
    client: openai.OpenAI, server: Any
) -> None:
    url = server.url + "/v1/chat/completions"
    ok = httpx.post(url, timeout=60, json={"messages": SAY_HI, "n": None, "max_tokens": 4})
    assert ok.status_code == 200, ok.text
    not_bool = httpx.post(url, json={"messages": SAY_HI, "stream": "no"})
    assert not_bool.status_code == 400 and not_bool.json()["error"]["param"] == "stream"
    reply = client.chat.completions.create(model=LOCAL_NAME, messages=SAY_HI, stop=[""],
                                           max_tokens=6, temperature=0)
    assert reply.choices[0].message.content


def test_get_one_model(client: openai.OpenAI) -> None:
    model = client.models.retrieve(LOCAL_NAME)
    assert (model.id, model.object) == (LOCAL_NAME, "model")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("no-such-model")
    assert missing.value.code == "model_not_found"


def test_offsets_beyond_64_bits_are_400s(server: Any) -> None:
    url = server.url + "/api/conversations"
    for offset in (2**63, 10**30, -1):
        response = httpx.get(url, params={"offset": offset})
        assert response.status_code == 400, (offset, response.text)
        assert response.json()["error"]["param"] == "offset"
    assert httpx.get(url, params={"offset": 2**63 - 1}).json() == []


# -- (5) openai-llm: the upstream's usage --------------------------------------------------------

def test_usage_is_the_upstreams_own_figures(
    make_config: Any, live_server: Any, standin: StandIn
) -> None:
    server = upstream_server(make_config, live_server, standin)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    reply = client.chat.completions.create(model="m", messages=SAY_HI, max_tokens=5)
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == standin.usage
    chunks = list(client.chat.completions.create(
        model="m", messages=SAY_HI, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == standin.usage
    assert standin.requests[0][1]["stream_options"] == {"include_usage": True}


def test_the_openapi_schema_documents_the_chat_body_and_error_shape(server: Any) -> None:
    schema = httpx.get(server.url + "/schema/openapi.json").json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in json.dumps(body) or "$ref" in body
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                if status.startswith(("4", "5")):
                    text = json.dumps(response)
                    assert "ErrorBody" in text, (path, method, status, text)
