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
MESSAGE = Schema(
    type=OpenAPIType.OBJECT, required=["role"],
    properties={
        "role": Schema(type=OpenAPIType.STRING,
                       enum=["system", "developer", "user", "assistant"]),
        "content": Schema(one_of=[Schema(type=OpenAPIType.STRING),
                                  Schema(type=OpenAPIType.ARRAY, items=TEXT_PART),
                                  Schema(type=NULL)]),
        "name": Schema(type=OpenAPIType.STRING),
    },
    description="The last message must have role user.",
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
        "user": _nullable(OpenAPIType.STRING, description="Accepted and ignored."),
        "seed": _nullable(OpenAPIType.INTEGER, description="Accepted and ignored."),
        "presence_penalty": _nullable(OpenAPIType.NUMBER, minimum=-2, maximum=2,
                                      description="Accepted and ignored."),
        "frequency_penalty": _nullable(OpenAPIType.NUMBER, minimum=-2, maximum=2,
                                       description="Accepted and ignored."),
    },
    description="OpenAI's chat completion request. Also accepted and ignored when "
    "harmless: store, service_tier, parallel_tool_calls, reasoning_effort, "
    "prompt_cache_key, safety_identifier, top_logprobs, logprobs false, logit_bias {}, "
    "tool_choice none/auto, response_format text, modalities [text]. Any other field "
    "is a 400 naming it.",
)


@dataclass
class ChatOperation(Operation):
    """The chat operation, with its request body documented."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=CHAT_REQUEST)},
            required=True,
        )
