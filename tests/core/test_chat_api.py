"""The OpenAI-compatible API with the official ``openai`` client, and the native
conversation API, against the app under uvicorn on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import openai
import pytest

from core import hookimpl
from core.app import create_app
from core.events import MessageCompleted
from tests.chat_support import (
    LOCAL,
    LOCAL_NAME,
    OPENAI,
    AuthPlugin,
    HeaderAuthenticator,
    StandIn,
    plugin_object,
)


def messages_of(server: Any, conversation: str, **kwargs: Any) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/api/conversations/{conversation}/messages", **kwargs)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_models_lists_the_local_model(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [LOCAL_NAME]


def test_completion_without_streaming(client: openai.OpenAI, server: Any) -> None:
    reply = client.chat.completions.create(
        model=LOCAL_NAME, messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8, temperature=0,
    )
    text = reply.choices[0].message.content
    assert text and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    # Stateless: nothing was stored.
    assert httpx.get(server.url + "/api/conversations").json() == []


def test_completion_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model=LOCAL_NAME, messages=[{"role": "system", "content": "Answer in one word."},
                                    {"role": "user", "content": "Capital of France?"}],
        max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert text.strip() and finishes[-1] in ("stop", "length") and finishes[:-1] == [None] * (
        len(finishes) - 1)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_a_stored_conversation_through_the_openai_api(client: openai.OpenAI, server: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=LOCAL_NAME, messages=[{"role": "user", "content": "My name is Ada."}],
        max_tokens=6, temperature=0, extra_headers={"X-Mami-Conversation": "new"},
    )
    conversation = raw.headers["x-mami-conversation"]
    first = raw.parse()
    # Continue it via metadata; only the last user message is taken from the request.
    stream = client.chat.completions.create(
        model=LOCAL_NAME, messages=[{"role": "user", "content": "ignored"},
                                    {"role": "user", "content": "What is my name?"}],
        max_tokens=6, temperature=0, stream=True,
        metadata={"conversation_id": conversation, "client_message_id": "q2"},
    )
    second = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    stored = messages_of(server, conversation)
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", "My name is Ada.", "complete"),
        ("assistant", first.choices[0].message.content, "complete"),
        ("user", "What is my name?", "complete"),
        ("assistant", second, "complete"),
    ]
    # The same client message id again: replayed, not generated, not stored twice.
    again = client.chat.completions.create(
        model=LOCAL_NAME, messages=[{"role": "user", "content": "What is my name?"}],
        metadata={"conversation_id": conversation, "client_message_id": "q2"},
    )
    assert again.choices[0].message.content == second
    assert len(messages_of(server, conversation)) == 4


def test_bad_requests_get_openai_shaped_errors(client: openai.OpenAI, server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=LOCAL_NAME,
                                       messages=[{"role": "assistant", "content": "x"}])
    assert "last message" in err.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    assert LOCAL_NAME in missing.value.message
    with pytest.raises(openai.APIStatusError) as large:
        client.chat.completions.create(model=LOCAL_NAME,
                                       messages=[{"role": "user", "content": "lorem " * 9000}])
    assert large.value.status_code == 413 and "tokens" in large.value.message
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model=LOCAL_NAME, messages=[{"role": "user", "content": "x"}],
            metadata={"conversation_id": "does-not-exist"})
    url = server.url + "/v1/chat/completions"
    cases = [
        (b"{not json", "JSON"),
        (b"[1, 2]", "object"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": 9}).encode(),
         "temperature"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), "n = 1"),
        (json.dumps({"messages": [{"role": "function", "content": "x"}]}).encode(), "role"),
        (json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).encode(),
         "text parts"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(),
         "max_tokens"),
    ]
    for body, words in cases:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert words in error["message"] and error["type"] == "invalid_request_error"
    assert httpx.get(server.url + "/api/conversations").json() == []


def test_a_client_that_goes_away_leaves_an_interrupted_message(server: Any) -> None:
    body = {"messages": [{"role": "user", "content": "Tell a very long story about ships."}],
            "max_tokens": 400, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers={"X-Mami-Conversation": "new"}) as response:
        conversation = response.headers["x-mami-conversation"]
        lines = response.iter_lines()
        got = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in got)
    deadline = time.monotonic() + 30
    while True:
        stored = messages_of(server, conversation)
        if stored[1]["status"] != "streaming" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert stored[1]["status"] == "interrupted" and stored[1]["content"]


def test_a_provider_stream_cut_midway_is_an_error_event_not_a_silent_success(
    make_config: Any, live_server: Any, standin: StandIn
) -> None:
    config = make_config(plugins={"openai-llm": {"base_url": standin.url, "model": "m",
                                                 "attempts": 1, "read_timeout": 10.0}})
    server = live_server(create_app(config, candidates=[OPENAI]))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    standin.mode = "cut"
    received: list[str] = []
    with pytest.raises(openai.APIError) as err:
        for c in client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
            extra_headers={"X-Mami-Conversation": "new"},
        ):
            received.append(c.choices[0].delta.content or "")
    assert "interrupted" in err.value.message
    assert "".join(received) == "Hello from"
    with pytest.raises(openai.APIStatusError) as whole:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert whole.value.status_code == 502
    standin.mode = "status500"
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="m", stream=True,
                                       messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 502 and "stand-in says 500" in failed.value.message
    conversations = httpx.get(server.url + "/api/conversations").json()
    stored = messages_of(server, conversations[0]["id"])
    assert (stored[1]["status"], stored[1]["content"]) == ("interrupted", "Hello from")


@pytest.fixture
def auth_server(make_config: Any, live_server: Any) -> Any:
    authenticator = HeaderAuthenticator()
    app = create_app(make_config(core={"auth": True}),
                     candidates=[LOCAL, plugin_object("header-auth", AuthPlugin(authenticator))])
    return live_server(app)


def test_conversations_are_scoped_to_their_owner(auth_server: Any) -> None:
    url = auth_server.url + "/api/conversations"
    alice = {"Authorization": "Bearer alice"}
    bob = {"Authorization": "Bearer bob"}
    assert httpx.get(url).status_code == 401
    created = httpx.post(url, json={"title": "plans"}, headers=alice)
    assert created.status_code == 201 and created.json()["title"] == "plans"
    cid = created.json()["id"]
    reply = httpx.post(auth_server.url + "/v1/chat/completions", headers=alice, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "metadata": {"conversation_id": cid}}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert [c["id"] for c in httpx.get(url, headers=alice).json()] == [cid]
    assert httpx.get(url, headers=bob).json() == []
    assert httpx.get(f"{url}/{cid}/messages", headers=bob).status_code == 404
    assert httpx.delete(f"{url}/{cid}", headers=bob).status_code == 404
    as_bob = httpx.post(auth_server.url + "/v1/chat/completions", headers=bob, json={
        "messages": [{"role": "user", "content": "hi"}], "metadata": {"conversation_id": cid}})
    assert as_bob.status_code == 404
    assert len(messages_of(auth_server, cid, headers=alice)) == 2
    assert httpx.post(url, json={"title": "x" * 300}, headers=alice).status_code == 400
    assert httpx.delete(f"{url}/{cid}", headers=alice).status_code == 204
    assert httpx.get(f"{url}/{cid}/messages", headers=alice).status_code == 404
    assert httpx.get(url, headers=alice).json() == []


class SlowRecorder:
    """Takes its time over each event, as memory extraction does."""

    def __init__(self) -> None:
        self.events: list[MessageCompleted] = []

    @hookimpl
    async def message_completed(self, event: MessageCompleted, runtime: Any) -> None:
        await asyncio.sleep(0.5)
        self.events.append(event)


def test_message_completed_fires_once_even_when_the_client_leaves_at_done(
    make_config: Any, live_server: Any
) -> None:
    recorder = SlowRecorder()
    app = create_app(make_config(), candidates=[LOCAL, plugin_object("recorder", recorder)])
    server = live_server(app)
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    # The openai client closes the connection as soon as it reads [DONE].
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=LOCAL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
        stream=True, extra_headers={"X-Mami-Conversation": "new"}) if c.choices)
    deadline = time.monotonic() + 20
    while not recorder.events and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert [e.assistant_text for e in recorder.events] == [text]
