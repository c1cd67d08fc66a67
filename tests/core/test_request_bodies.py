"""Every JSON body is checked the same way (core.api.bodies): an unknown field, a value
of the wrong JSON type or a missing field is a 400 whose ``param`` names the field and
whose message names it (with the known fields); a multipart upload with a plain field
sent as a file part, or an unknown plain field, names that field. Nothing is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from core.app import create_app
from core.plugins import builtin_candidates

PLUGINS = ("chroma-rag", "forge-image", "token-ws-auth")


@pytest.fixture
def server(make_config: Any, live_server: Any) -> Any:
    candidates = [c for c in builtin_candidates() if c.name in PLUGINS]
    return live_server(create_app(make_config(), candidates=candidates))


def refused(response: httpx.Response, param: str, *words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    for word in (param, *words):
        assert word in error["message"], error


@pytest.mark.parametrize(("method", "path", "body", "param", "words"), [
    ("POST", "/api/conversations", {"titel": "x"}, "titel", ("known: ", "title")),
    ("PATCH", "/api/conversations/{cid}", {"titel": "x"}, "titel", ("known: ", "title")),
    ("POST", "/api/conversations", {"temperature": "hot"}, "temperature", ()),
    ("POST", "/api/conversations", {"max_tokens": 0}, "max_tokens", ("from 1",)),
    ("POST", "/api/search", {"query": "x", "kk": 3}, "kk", ("known: k, query, scopes",)),
    ("POST", "/api/search", {"query": "x", "k": "3"}, "k", ("expected an integer",)),
    ("POST", "/api/images", {"prompt": "x", "wdth": 64}, "wdth", ("known: ", "width")),
    ("POST", "/api/images", {"prompt": "x", "steps": 0}, "steps", ("from 1 to 150",)),
    ("POST", "/api/tokens", {"nam": "ci"}, "nam", ("known: expires_in, name",)),
    ("POST", "/api/tokens", {"name": 5}, "name", ()),
    ("POST", "/api/ws-ticket", {"owner": "bob"}, "owner", ("takes no fields",)),
    ("POST", "/api/documents", {"source": "a.md", "text": "hi", "scop": "work"}, "scop",
     ("known: scope, source, text",)),
    ("POST", "/api/documents", {"source": "a.md", "text": 5}, "text", ("a string",)),
    ("POST", "/api/documents", {"source": "a.md"}, "text", ("required",)),
    ("POST", "/v1/chat/completions", {"model": "", "messages": [], "frobnicate": 1},
     "frobnicate", ("known: ", "messages")),
])
def test_a_bad_field_is_a_400_naming_it(server: Any, method: str, path: str,
                                        body: dict[str, Any], param: str,
                                        words: tuple[str, ...]) -> None:
    cid = httpx.post(f"{server.url}/api/conversations", json={"title": "keep"}).json()["id"]
    response = httpx.request(method, server.url + path.format(cid=cid), json=body, timeout=30)
    refused(response, param, *words)
    assert httpx.get(f"{server.url}/api/conversations/{cid}").json()["title"] == "keep"
    assert len(httpx.get(f"{server.url}/api/conversations").json()) == 1
    assert httpx.get(f"{server.url}/api/documents").json() == []
    assert httpx.get(f"{server.url}/api/images").json() == []
    assert httpx.get(f"{server.url}/api/tokens").json()["data"] == []


def test_an_empty_body_is_no_fields(server: Any) -> None:
    for body in ({}, None):
        ticket = httpx.post(f"{server.url}/api/ws-ticket", json=body)
        assert ticket.status_code == 201, ticket.text


def test_a_plain_form_field_sent_as_a_file_is_named(server: Any) -> None:
    """``curl -F file=@a.md -F scope=@a.md`` answered "two files have the same name"
    (the scope part was taken for a second document)."""
    document = ("a.md", b"# Apples\nApples are red.", "text/markdown")
    for field in ("scope", "source", "text"):
        response = httpx.post(f"{server.url}/api/documents",
                              files=[("file", document), (field, document)])
        refused(response, field, "plain form value", f"-F '{field}=value'")
    unknown = httpx.post(f"{server.url}/api/documents", files=[("file", document)],
                         data={"scop": "work"})
    refused(unknown, "scop", "unknown form field", "scope")
    assert httpx.get(f"{server.url}/api/documents").json() == []
