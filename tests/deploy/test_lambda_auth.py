"""Token auth (token-ws-auth) through the Lambda handler, with tokens made the way an
operator makes them for a Lambda deployment: ``mami token create`` against its database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import ConfigError
from tests.deploy.lambda_events import SHAPES, Invoker, bearer


@pytest.mark.parametrize("shape", SHAPES)
def test_token_is_checked_through_each_event_shape(
    invoke: Invoker, token: str, shape: str
) -> None:
    listed = invoke(shape, "GET", "/api/tokens", headers=bearer(token))
    assert listed.status == 200, listed.body
    assert [t["owner"] for t in listed.json()["data"]] == ["alice"]

    missing = invoke(shape, "GET", "/api/tokens")
    assert missing.status == 401
    assert "missing credential" in missing.json()["error"]["message"]

    wrong = invoke(shape, "GET", "/api/tokens", headers=bearer(token[:-4] + "AAAA"))
    assert wrong.status == 401
    assert wrong.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("base64_body", [False, True])
def test_json_and_base64_bodies_create_a_token(
    invoke: Invoker, token: str, shape: str, base64_body: bool
) -> None:
    body = json.dumps({"name": f"laptop-{shape}", "expires_in": "30d"})
    created = invoke(shape, "POST", "/api/tokens", body=body, base64_body=base64_body,
                     headers={**bearer(token), "content-type": "application/json"})
    assert created.status == 201, created.body
    new = created.json()
    assert new["name"] == f"laptop-{shape}"
    assert new["owner"] == "alice"

    listed = invoke(shape, "GET", "/api/tokens", headers=bearer(new["token"]))
    assert listed.status == 200
    assert sorted(t["name"] for t in listed.json()["data"]) == ["", f"laptop-{shape}"]


@pytest.mark.parametrize("base64_body", [False, True])
def test_bad_body_is_a_400_and_writes_nothing(
    invoke: Invoker, token: str, base64_body: bool
) -> None:
    headers = {**bearer(token), "content-type": "application/json"}
    broken = invoke("http-api-v2", "POST", "/api/tokens", body='{"name": "x", ',
                    base64_body=base64_body, headers=headers)
    assert broken.status == 400
    assert broken.json()["error"]["message"]

    bad_duration = invoke("rest-api-v1", "POST", "/api/tokens", base64_body=base64_body,
                          body=json.dumps({"expires_in": "forever"}), headers=headers)
    assert bad_duration.status == 400
    assert "forever" in bad_duration.json()["error"]["message"]

    listed = invoke("alb", "GET", "/api/tokens", headers=bearer(token))
    assert len(listed.json()["data"]) == 1


def failed_logins(invoke: Invoker, shape: str, token: str, claims: list[str]) -> list[int]:
    """Statuses of bad-token requests, each claiming another first X-Forwarded-For hop,
    then of one request with the good token (which the limit lets through: it slows
    guessing, it does not lock out valid credentials)."""
    statuses = [invoke(shape, "GET", "/api/tokens",
                       headers={**bearer(token[:-4] + "AAAA"), "x-forwarded-for": claim}).status
                for claim in claims]
    good = invoke(shape, "GET", "/api/tokens",
                  headers={**bearer(token), "x-forwarded-for": claims[-1]})
    return [*statuses, good.status]


@pytest.mark.parametrize("shape", SHAPES)
def test_a_forged_first_forwarded_hop_does_not_escape_the_failed_login_limit(
    invoke: Invoker, lambda_env: Any, token: str, shape: str
) -> None:
    """Behind an ALB (and API Gateway, function URLs) the limit counts the address AWS
    saw, whatever the caller writes into X-Forwarded-For."""
    lambda_env(MAMI__PLUGINS__TOKEN_WS_AUTH__MAX_FAILED_ATTEMPTS="3")
    claims = [f"10.0.0.{i}" for i in range(4)]
    assert failed_logins(invoke, shape, token, claims) == [401, 401, 401, 429, 200]


def test_trusted_hops_take_the_address_a_trusted_proxy_saw(
    invoke: Invoker, lambda_env: Any, token: str
) -> None:
    """With a CloudFront distribution in front of the ALB (``MAMI_FORWARDED_HOPS=1``)
    the address CloudFront appended identifies the caller: distinct callers behind the
    same edge are counted apart, and a forged hop further left is still ignored."""
    lambda_env(MAMI__PLUGINS__TOKEN_WS_AUTH__MAX_FAILED_ATTEMPTS="3", MAMI_FORWARDED_HOPS="1")
    callers = [f"forged, 203.0.113.{i}" for i in range(4)]
    assert failed_logins(invoke, "alb", token, callers) == [401, 401, 401, 401, 200]
    same = [f"forged-{i}, 203.0.113.50" for i in range(4)]
    assert failed_logins(invoke, "alb", token, same) == [401, 401, 401, 429, 200]


def test_a_bad_hop_count_names_the_variable(invoke: Invoker, lambda_env: Any) -> None:
    lambda_env(MAMI_FORWARDED_HOPS="all")
    with pytest.raises(ConfigError, match="MAMI_FORWARDED_HOPS"):
        invoke("alb", "GET", "/health")
