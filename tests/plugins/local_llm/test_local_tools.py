"""local-llm with tools and JSON output, through the OpenAI API with the official SDK:
llama.cpp's ``chatml-function-calling`` handler makes SmolLM2 call a tool when the
request names it (``tool_choice``), and its JSON grammars hold a reply to a schema."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from core.app import create_app
from tests.chat_support import LOCAL, LOCAL_NAME

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def sdk(make_config: Any, live_server: Any) -> openai.OpenAI:
    config = make_config(plugins={"local-llm": {"chat_format": "chatml-function-calling",
                                                "seed": 1}})
    server = live_server(create_app(config, candidates=[LOCAL]))
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_the_local_model_calls_a_named_tool_and_answers_in_json(sdk: openai.OpenAI) -> None:
    asked = sdk.chat.completions.create(
        model=LOCAL_NAME, messages=ASK, tools=[WEATHER], temperature=0, max_tokens=64,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = asked.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and call.id
    assert isinstance(json.loads(call.function.arguments).get("city"), str)

    schema = {"type": "object", "properties": {"sky": {"type": "string", "maxLength": 12}},
              "required": ["sky"]}
    answer = sdk.chat.completions.create(
        model=LOCAL_NAME, messages=ASK, temperature=0, max_tokens=80,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}})
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content or "")["sky"], str)
