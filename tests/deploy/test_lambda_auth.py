"""Token auth (token-ws-auth) through the Lambda handler, with tokens made the way an
operator makes them for a Lambda deployment: ``mami token create`` against its database."""

from __future__ import annotations

import json

import pytest

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
