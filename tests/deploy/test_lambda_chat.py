"""Chat through the Lambda handler: the OpenAI-compatible route with the openai-llm
plugin against a real ``llama_cpp.server`` on loopback (SmolLM2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.chat_support import LlamaServer, StandIn
from tests.conftest import free_port
from tests.deploy.lambda_events import API_TIMEOUT_MS, SHAPES, Invoker, bearer

QUESTION = {"messages": [{"role": "user", "content": "Name a colour."}],
            "max_tokens": 8, "temperature": 0}


@pytest.fixture
def chat_env(lambda_env: Any, token: str, llama_server: LlamaServer) -> str:
    """The function pointed at the model server through the documented variables."""
    lambda_env(MAMI_LLM_BASE_URL=llama_server.url, MAMI_LLM_MODEL="smollm2",
               MAMI__PLUGINS__OPENAI_LLM__CONTEXT_WINDOW="2048")
    return token


def post_chat(invoke: Invoker, shape: str, token: str, body: dict[str, Any],
              base64_body: bool = False, conversation: str | None = None) -> Any:
    headers = {**bearer(token), "content-type": "application/json"}
    if conversation:
        headers["x-mami-conversation"] = conversation
    return invoke(shape, "POST", "/v1/chat/completions", body=json.dumps(body),
                  base64_body=base64_body, headers=headers)


@pytest.mark.parametrize("shape", SHAPES)
def test_chat_answers_through_each_event_shape(
    invoke: Invoker, chat_env: str, shape: str
) -> None:
    response = post_chat(invoke, shape, chat_env, QUESTION, base64_body=shape == "alb")
    assert response.status == 200, response.body
    answer = response.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["message"]["content"].strip()
    assert answer["usage"]["completion_tokens"] >= 1
    models = invoke(shape, "GET", "/v1/models", headers=bearer(chat_env)).json()
    assert answer["model"] in [m["id"] for m in models["data"]]
    assert invoke.runtime.provider_plugin[id(invoke.runtime.llm)] == "openai-llm"


def test_stored_conversation_is_complete_when_the_response_returns(
    invoke: Invoker, chat_env: str
) -> None:
    """Nothing runs after a Lambda response: the reply is stored before it is sent."""
    response = post_chat(invoke, "http-api-v2", chat_env, QUESTION, conversation="new")
    assert response.status == 200, response.body
    conversation = response.headers["x-mami-conversation"]
    messages = invoke("http-api-v2", "GET", f"/api/conversations/{conversation}/messages",
                      headers=bearer(chat_env)).json()
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"), ("assistant", "complete")]
    assert messages[1]["content"] == response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize("shape", SHAPES)
def test_streaming_is_refused_with_a_clear_error_and_stores_nothing(
    invoke: Invoker, chat_env: str, shape: str
) -> None:
    response = post_chat(invoke, shape, chat_env, {**QUESTION, "stream": True},
                         conversation="new")
    assert response.status == 400
    assert "streaming needs the server deployment" in response.json()["error"]["message"]
    listed = invoke(shape, "GET", "/api/conversations", headers=bearer(chat_env)).json()
    assert listed == []


def test_model_server_down_is_a_json_error(invoke: Invoker, lambda_env: Any, token: str) -> None:
    lambda_env(MAMI_LLM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1",
               MAMI__PLUGINS__OPENAI_LLM__ATTEMPTS="1")
    response = post_chat(invoke, "rest-api-v1", token, QUESTION)
    assert response.status == 502
    assert response.json()["error"]["message"]


def test_no_websocket_routes_on_lambda(invoke: Invoker, token: str) -> None:
    response = invoke("http-api-v2", "GET", "/ws/chat", headers=bearer(token))
    assert response.status == 404
    paths = invoke("http-api-v2", "GET", "/schema/openapi.json").json()["paths"]
    assert "/v1/chat/completions" in paths
    assert not [p for p in paths if p.startswith("/ws")]


@pytest.fixture
def stalling_model() -> Iterator[StandIn]:
    """An OpenAI-compatible server that stops answering (mode set by each test)."""
    server = StandIn("stall_first").start()
    yield server
    server.stop()


@pytest.mark.parametrize(("shape", "mode", "stored"), [
    ("http-api-v2", "stall_first", ("interrupted", "")),
    ("rest-api-v1", "stall_mid", ("interrupted", "Hello")),
    ("alb", "stall_first", ("interrupted", "")),
    ("function-url", "stall_mid", ("interrupted", "Hello")),
])
def test_a_model_that_stalls_past_the_deadline_gets_mamis_504_and_the_row_is_closed(
    invoke: Invoker, lambda_env: Any, token: str, stalling_model: StandIn, shape: str,
    mode: str, stored: tuple[str, str],
) -> None:
    """The model's own timeouts (read 60 s, retry budget 30 s) outlast the function;
    the handler's deadline (time left minus the margin) ends the request first: a JSON
    504, the reply stored interrupted with what arrived, and a retry is not refused."""
    stalling_model.mode = mode
    lambda_env(MAMI_LLM_BASE_URL=stalling_model.url, MAMI_LLM_MODEL="standin",
               MAMI__PLUGINS__OPENAI_LLM__READ_TIMEOUT="60",
               MAMI__PLUGINS__OPENAI_LLM__RETRY_BUDGET="30")
    invoke.remaining_ms = int((invoke.module.DEADLINE_MARGIN_SECONDS + 1.5) * 1000)
    body = {**QUESTION, "metadata": {"client_message_id": f"deadline-{shape}"}}
    response = post_chat(invoke, shape, token, body, conversation="new")
    assert response.status == 504, response.body
    error = response.json()["error"]
    assert error["code"] == "deadline_exceeded" and "did not finish within" in error["message"]
    assert response.headers["content-type"] == "application/json"

    invoke.remaining_ms = API_TIMEOUT_MS
    (conversation,) = invoke(shape, "GET", "/api/conversations", headers=bearer(token)).json()
    messages = invoke(shape, "GET", f"/api/conversations/{conversation['id']}/messages",
                      headers=bearer(token)).json()
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"), ("assistant", stored[0])]
    assert messages[1]["content"] == stored[1]

    stalling_model.mode = "ok"  # the same message again: answered, not 409
    retried = post_chat(invoke, shape, token, body, conversation=conversation["id"])
    assert retried.status == 200, retried.body
    assert retried.json()["choices"][0]["message"]["content"] == "Hello from the stand-in."
