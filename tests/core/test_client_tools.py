"""Client-side tools through ``/v1/chat/completions`` (OpenAI semantics: mami passes the
client's tools to the model and hands the model's calls back), with the official
``openai`` SDK and LangChain against mami under uvicorn, the model being a scripted
OpenAI-compatible server over a real socket; and ``response_format``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from core.app import create_app
from tests.chat_support import LOCAL, OPENAI
from tests.scripted_model import Call, Reply, ScriptedModel, last_tool_results

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]},
    },
}


def weather_script(body: dict[str, Any]) -> Reply:
    """Asks for the weather when offered the tool; answers from the tool's result."""
    results = last_tool_results(body)
    if (body.get("response_format") or {}).get("type") == "json_schema":
        return Reply('{"sky": "clear", "celsius": 21}')
    if results:
        return Reply(f"It is {json.loads(results[0]['content'])['sky']} in Paris.")
    if body.get("tools"):
        return Reply(calls=[Call("get_weather", {"city": "Paris"})])
    return Reply("No tools, no weather.")


@pytest.fixture
def model() -> Iterator[ScriptedModel]:
    server = ScriptedModel(weather_script).start()
    yield server
    server.stop()


@pytest.fixture
def mami(make_config: Any, live_server: Any, model: ScriptedModel) -> Any:
    config = make_config(plugins={"openai-llm": {"base_url": model.url, "model": "scripted",
                                                 "attempts": 1}})
    return live_server(create_app(config, candidates=[OPENAI]))


@pytest.fixture
def sdk(mami: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=mami.url + "/v1", api_key="unused", max_retries=0)


def test_the_openai_sdk_runs_a_client_tool_round_trip(sdk: openai.OpenAI,
                                                      model: ScriptedModel) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = sdk.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id == "call_scripted_1"  # the model's id, unchanged
    # The model saw the client's tool exactly as sent.
    assert model.requests[0]["tools"] == [WEATHER]

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}]
    second = sdk.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == "It is sunny in Paris."
    sent = model.requests[1]["messages"]
    assert sent[-2]["tool_calls"] == [{"id": call.id, "type": "function", "function": {
        "name": "get_weather", "arguments": call.function.arguments}}]
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}


def test_the_openai_sdk_streams_a_client_tool_round_trip(sdk: openai.OpenAI,
                                                         model: ScriptedModel) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    with sdk.chat.completions.stream(model="scripted", messages=messages,
                                     tools=[WEATHER]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id == "call_scripted_1"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    messages += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": call.id, "type": "function",
                      "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
                 {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "grey"}'}]
    pieces = []
    finish = None
    for chunk in sdk.chat.completions.create(model="scripted", messages=messages,
                                             tools=[WEATHER], stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == "It is grey in Paris." and finish == "stop"


def test_streamed_tool_call_chunks_have_openais_shape(mami: Any) -> None:
    body = {"model": "scripted", "stream": True, "tools": [WEATHER],
            "messages": [{"role": "user", "content": "Weather in Paris?"}]}
    with httpx.stream("POST", mami.url + "/v1/chat/completions", json=body,
                      timeout=10) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                 if c["choices"][0]["delta"].get("tool_calls")]
    assert fragments[0] == {"index": 0, "id": "call_scripted_1", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"}
               for f in fragments[1:])
    assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == \
        {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_langchain_bind_tools_against_mami(mami: Any, model: ScriptedModel) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return json.dumps({"sky": "foggy", "city": city})

    llm = langchain_openai.ChatOpenAI(base_url=mami.url + "/v1", api_key="unused",
                                      model="scripted", max_retries=0)
    bound = llm.bind_tools([get_weather])
    history: list[Any] = [HumanMessage("Weather in Paris?")]
    asked = bound.invoke(history)
    assert asked.tool_calls == [{"name": "get_weather", "args": {"city": "Paris"},
                                 "id": "call_scripted_1", "type": "tool_call"}]
    assert model.requests[0]["tools"][0]["function"]["name"] == "get_weather"
    history += [asked, ToolMessage(get_weather.invoke(asked.tool_calls[0]["args"]),
                                   tool_call_id=asked.tool_calls[0]["id"])]
    answer = bound.invoke(history)
    assert answer.content == "It is foggy in Paris." and not answer.tool_calls


@pytest.mark.parametrize("messages, param", [
    ([{"role": "user", "content": "hi"},
      {"role": "tool", "tool_call_id": "call_1", "content": "x"}], "messages[1].tool_call_id"),
    ([{"role": "user", "content": "hi"},
      {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
          "name": "get_weather", "arguments": "{}"}}]},
      {"role": "user", "content": "and?"}], "messages"),
    ([{"role": "user", "content": "hi"},
      {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                            "function": {"name": "f"}}]},
      {"role": "tool", "tool_call_id": "call_1", "content": "x"}],
     "messages[1].tool_calls[0].function.arguments"),
    ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}],
     "messages[1].tool_call_id"),
])
def test_tool_messages_that_break_openais_rules_are_a_400(
        mami: Any, model: ScriptedModel, messages: list[Any], param: str) -> None:
    response = httpx.post(mami.url + "/v1/chat/completions", timeout=10,
                          json={"messages": messages, "tools": [WEATHER]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert model.requests == []


@pytest.mark.parametrize("body, param", [
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]},
     "tools[0].function.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
     "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"tools": [WEATHER], "metadata": {"conversation_id": "new"}}, "tools"),
])
def test_bad_tool_fields_are_a_400_naming_them(mami: Any, model: ScriptedModel,
                                               body: dict[str, Any], param: str) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    response = httpx.post(mami.url + "/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert model.requests == []


def test_tool_choice_and_response_format_reach_the_model(sdk: openai.OpenAI,
                                                         model: ScriptedModel) -> None:
    schema = {"name": "weather", "schema": {"type": "object",
                                            "properties": {"sky": {"type": "string"}}}}
    sdk.chat.completions.create(
        model="scripted", messages=[{"role": "user", "content": "hi"}], tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        response_format={"type": "json_schema", "json_schema": schema})
    sent = model.requests[-1]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False
    assert sent["response_format"] == {"type": "json_schema", "json_schema": schema}


def test_response_format_for_a_model_without_support_is_a_400(
        make_config: Any, live_server: Any) -> None:
    """A provider that does not say it supports JSON output (no ``supports``) gets no
    request it would silently ignore."""
    from tests.chat_support import plugin_object
    from tests.core.test_tool_loop import PlainProvider, ProviderPlugin

    server = live_server(create_app(make_config(), candidates=[
        plugin_object("plain-llm", ProviderPlugin(PlainProvider()))]))
    for body, param in (({"response_format": {"type": "json_object"}}, "response_format"),
                        ({"tools": [WEATHER]}, "tools")):
        response = httpx.post(server.url + "/v1/chat/completions", timeout=10, json={
            "messages": [{"role": "user", "content": "hi"}], **body})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["code"] == "unsupported_parameter"
        assert error["message"] == f"model plain does not support {param}"
        assert set(error) >= {"message", "type", "param", "code"}


def test_the_local_model_without_a_tool_handler_refuses_tools(make_config: Any,
                                                              live_server: Any) -> None:
    server = live_server(create_app(make_config(), candidates=[LOCAL]))
    response = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER]})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "tools"
    assert "does not support tools" in response.json()["error"]["message"]


def test_the_openai_sdks_parse_gets_a_typed_answer(sdk: openai.OpenAI,
                                                   model: ScriptedModel) -> None:
    from pydantic import BaseModel

    class Weather(BaseModel):
        sky: str
        celsius: int

    parsed = sdk.chat.completions.parse(
        model="scripted", messages=[{"role": "user", "content": "Weather?"}],
        response_format=Weather)
    assert parsed.choices[0].message.parsed == Weather(sky="clear", celsius=21)
    sent = model.requests[-1]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Weather"
    assert sent["json_schema"]["schema"]["properties"]["celsius"] == {
        "title": "Celsius", "type": "integer"}
