"""OpenAPI documentation of the OpenAI-compatible chat request body.

The handler reads and validates the body itself (so every problem is an OpenAI-shaped
400 naming the field); this module only describes that body to ``/schema``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema

NULL = OpenAPIType.NULL


def _nullable(kind: OpenAPIType, **extra: Any) -> Schema:
    return Schema(type=[kind, NULL], **extra)


TEXT_PART = Schema(
    type=OpenAPIType.OBJECT, required=["type", "text"],
    properties={"type": Schema(type=OpenAPIType.STRING, enum=["text"]),
                "text": Schema(type=OpenAPIType.STRING)},
)
FUNCTION_CALL = Schema(
    type=OpenAPIType.OBJECT, required=["id", "type", "function"],
    properties={
        "id": Schema(type=OpenAPIType.STRING, min_length=1),
        "type": Schema(type=OpenAPIType.STRING, enum=["function"]),
        "function": Schema(type=OpenAPIType.OBJECT, required=["name", "arguments"], properties={
            "name": Schema(type=OpenAPIType.STRING, min_length=1),
            "arguments": Schema(type=OpenAPIType.STRING, description="JSON text")}),
    },
)
MESSAGE = Schema(
    type=OpenAPIType.OBJECT, required=["role"],
    properties={
        "role": Schema(type=OpenAPIType.STRING,
                       enum=["system", "developer", "user", "assistant", "tool"]),
        "content": Schema(one_of=[Schema(type=OpenAPIType.STRING),
                                  Schema(type=OpenAPIType.ARRAY, items=TEXT_PART),
                                  Schema(type=NULL)]),
        "name": Schema(type=OpenAPIType.STRING),
        "tool_calls": Schema(type=OpenAPIType.ARRAY, items=FUNCTION_CALL,
                             description="Assistant messages: the calls the model made."),
        "tool_call_id": Schema(type=OpenAPIType.STRING, min_length=1,
                               description="Tool messages: the call this is the result of."),
    },
    description="The last message must have role user, or tool (the results of the "
    "assistant's tool calls before it; each call answered).",
)
TOOL = Schema(
    type=OpenAPIType.OBJECT, required=["type", "function"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, enum=["function"]),
        "function": Schema(type=OpenAPIType.OBJECT, required=["name"], properties={
            "name": Schema(type=OpenAPIType.STRING, pattern="^[a-zA-Z0-9_-]{1,64}$"),
            "description": Schema(type=OpenAPIType.STRING),
            "parameters": Schema(type=OpenAPIType.OBJECT, description="JSON Schema"),
            "strict": _nullable(OpenAPIType.BOOLEAN)}),
    },
)
CHAT_REQUEST = Schema(
    type=OpenAPIType.OBJECT,
    required=["messages"],
    additional_properties=False,
    properties={
        "model": _nullable(OpenAPIType.STRING, description="A model id from /v1/models; "
                           "null or absent: the active model."),
        "messages": Schema(type=OpenAPIType.ARRAY, items=MESSAGE, min_items=1),
        "stream": _nullable(OpenAPIType.BOOLEAN),
        "stream_options": Schema(
            type=[OpenAPIType.OBJECT, NULL], additional_properties=False,
            properties={"include_usage": _nullable(OpenAPIType.BOOLEAN),
                        "include_obfuscation": _nullable(OpenAPIType.BOOLEAN)}),
        "max_tokens": _nullable(OpenAPIType.INTEGER, minimum=1),
        "max_completion_tokens": _nullable(OpenAPIType.INTEGER, minimum=1),
        "temperature": _nullable(OpenAPIType.NUMBER, minimum=0, maximum=2),
        "top_p": _nullable(OpenAPIType.NUMBER, minimum=0, maximum=1),
        "n": Schema(type=[OpenAPIType.INTEGER, NULL], enum=[1, None],
                    description="Only 1 is supported."),
        "stop": Schema(one_of=[Schema(type=OpenAPIType.STRING),
                               Schema(type=OpenAPIType.ARRAY,
                                      items=Schema(type=OpenAPIType.STRING), max_items=4),
                               Schema(type=NULL)],
                       description="Empty strings are ignored."),
        "metadata": Schema(
            type=[OpenAPIType.OBJECT, NULL],
            properties={"conversation_id": Schema(type=OpenAPIType.STRING,
                                                  description="A stored conversation, "
                                                  "or new to start one."),
                        "client_message_id": Schema(type=OpenAPIType.STRING, min_length=1,
                                                    max_length=128)},
            additional_properties=Schema(type=OpenAPIType.STRING)),
        "tools": Schema(type=[OpenAPIType.ARRAY, NULL], items=TOOL,
                        description="The client's tools: passed to the model, whose calls "
                        "come back as message.tool_calls (finish_reason tool_calls). Needs a "
                        "stateless request (no conversation id)."),
        "tool_choice": Schema(one_of=[
            Schema(type=OpenAPIType.STRING, enum=["none", "auto", "required"]),
            Schema(type=OpenAPIType.OBJECT, required=["type", "function"], properties={
                "type": Schema(type=OpenAPIType.STRING, enum=["function"]),
                "function": Schema(type=OpenAPIType.OBJECT, required=["name"], properties={
                    "name": Schema(type=OpenAPIType.STRING)})}),
            Schema(type=NULL)]),
        "parallel_tool_calls": _nullable(OpenAPIType.BOOLEAN),
        "response_format": Schema(
            type=[OpenAPIType.OBJECT, NULL], required=["type"],
            properties={"type": Schema(type=OpenAPIType.STRING,
                                       enum=["text", "json_object", "json_schema"]),
                        "json_schema": Schema(type=OpenAPIType.OBJECT, required=["name"],
                                              properties={
                                                  "name": Schema(type=OpenAPIType.STRING),
                                                  "schema": Schema(type=OpenAPIType.OBJECT),
                                                  "strict": _nullable(OpenAPIType.BOOLEAN)})},
            description="json_object or json_schema: a 400 for a model that does not "
            "support it."),
        "user": _nullable(OpenAPIType.STRING, description="Accepted and ignored."),
        "seed": _nullable(OpenAPIType.INTEGER, description="Accepted and ignored."),
        "presence_penalty": _nullable(OpenAPIType.NUMBER, minimum=-2, maximum=2,
                                      description="Accepted and ignored."),
        "frequency_penalty": _nullable(OpenAPIType.NUMBER, minimum=-2, maximum=2,
                                       description="Accepted and ignored."),
    },
    description="OpenAI's chat completion request. Also accepted and ignored when "
    "harmless: store, service_tier, reasoning_effort, prompt_cache_key, "
    "safety_identifier, top_logprobs, logprobs false, logit_bias {}, modalities [text]. "
    "Any other field is a 400 naming it.",
)


@dataclass
class ChatOperation(Operation):
    """The chat operation, with its request body documented."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=CHAT_REQUEST)},
            required=True,
        )
