"""Schemathesis against ``/schema/openapi.json``: every core operation, valid and invalid
inputs generated from the schema, no 5xx and no response that contradicts the schema.
(Schema-valid bodies may still be refused for what a schema cannot say, such as a
blank message or a last message that is not the user's, so the check that every
schema-valid request is accepted is left out.)
Fixed seed (derandomized) and a bounded number of examples, so it is repeatable and
quick. The model is openai-llm against the stand-in server (instant answers)."""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from core.app import create_app  # noqa: E402
from tests.chat_support import OPENAI, StandIn  # noqa: E402

EXAMPLES = 25
CORE_PATHS = r"^/(v1/|api/conversations|health)"


def failures_of(operation: Any, mode: Any, base_url: str, calls: list[str]) -> list[str]:
    found: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any) -> None:
        calls.append(operation.label)
        case.call_and_validate(base_url=base_url, timeout=30,
                               excluded_checks=[positive_data_acceptance])

    try:
        check()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE, operation.label
    except Exception as exc:  # schemathesis' failure groups, after shrinking
        found.append(f"{operation.label} ({mode.value}): {str(exc)[:800]}")
    return found


def test_the_core_api_conforms_to_its_openapi_schema(
    make_config: Any, live_server: Any, standin: StandIn
) -> None:
    config = make_config(plugins={"openai-llm": {"base_url": standin.url, "model": "m",
                                                 "attempts": 1}})
    server = live_server(create_app(config, candidates=[OPENAI]))
    schema = schemathesis.openapi.from_url(server.url + "/schema/openapi.json")
    operations = [result.ok() for result in schema.include(path_regex=CORE_PATHS)
                  .get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/chat/completions", "GET /v1/models/{model_id}",
            "GET /api/conversations"} <= labels, labels
    calls: list[str] = []
    failures = [failure for operation in operations
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
                for failure in failures_of(operation, mode, server.url, calls)]
    assert failures == []
    assert calls.count("POST /v1/chat/completions") >= EXAMPLES, calls
