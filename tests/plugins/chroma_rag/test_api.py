"""The documents API through the app: the owner comes from the credential only, bad
input is a clear 4xx and leaves nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from core.app import create_app
from tests.plugins.chroma_rag.conftest import HEADER_AUTH, rag_candidates

ALICE = {"Authorization": "Bearer alice"}
BOB = {"Authorization": "Bearer bob"}


@pytest.fixture
def client_mode() -> str:
    return "embedded"  # the HTTP layer does not depend on the client mode


@pytest.fixture
async def client(make_config: Any,
                 rag_settings: dict[str, Any]) -> AsyncIterator[AsyncTestClient[Any]]:
    config = make_config(core={"auth": True},
                         plugins={"chroma-rag": {**rag_settings, "max_bytes": 5000}})
    app = create_app(config, candidates=rag_candidates(HEADER_AUTH))
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def error_of(response: Any) -> str:
    return str(response.json()["error"]["message"])


async def test_upload_list_search_delete(client: AsyncTestClient[Any]) -> None:
    paris = {"source": "paris.md", "text": "Paris is the capital of France.", "scope": "work"}
    claimed = await client.post("/api/documents", headers=ALICE, json={**paris, "owner": "bob"})
    assert claimed.status_code == 400 and claimed.json()["error"]["param"] == "owner"
    assert (await client.get("/api/documents", headers=BOB)).json() == []
    made = await client.post("/api/documents", headers=ALICE, json=paris)
    assert made.status_code == 201, made.text
    (doc,) = made.json()
    assert doc["source"] == "paris.md" and doc["scope"] == "work" and doc["chunks"] == 1
    files = [("file", ("a.md", b"# Apples\nApples are red.", "text/markdown")),
             ("file", ("b.txt", "Bananas are yellow. \u00e7".encode(), "text/plain"))]
    uploaded = await client.post("/api/documents", headers=ALICE, files=files)
    assert uploaded.status_code == 201, uploaded.text
    assert [d["source"] for d in uploaded.json()] == ["a.md", "b.txt"]
    assert {d["scope"] for d in uploaded.json()} == {"default"}

    listed = (await client.get("/api/documents", headers=ALICE)).json()
    assert sorted(d["source"] for d in listed) == ["a.md", "b.txt", "paris.md"]
    assert (await client.get("/api/documents", headers=BOB)).json() == []

    found = await client.post("/api/search", headers=ALICE,
                              json={"query": "capital city of France", "k": 2})
    assert found.status_code == 200
    assert found.json()[0]["source"] == "paris.md"
    assert (await client.post("/api/search", headers=BOB, json={"query": "France"})).json() == []
    work = await client.post("/api/search", headers=ALICE,
                             json={"query": "fruit", "scopes": ["work"]})
    assert [p["source"] for p in work.json()] == ["paris.md"]

    assert (await client.delete(f"/api/documents/{doc['id']}", headers=BOB)).status_code == 404
    assert (await client.delete(f"/api/documents/{doc['id']}", headers=ALICE)).status_code == 204
    assert (await client.delete(f"/api/documents/{doc['id']}", headers=ALICE)).status_code == 404
    erased = await client.delete("/api/documents", headers=ALICE)
    assert erased.status_code == 200 and erased.json() == {"deleted": 2}
    assert (await client.post("/api/search", headers=ALICE, json={"query": "apples"})).json() == []
    assert (await client.get("/api/documents", headers=ALICE)).json() == []


@pytest.mark.parametrize(("files", "status", "message"), [
    ([("file", ("bin.md", b"PNG\x00\x01\x02", "application/octet-stream"))], 400,
     "bin.md: binary file"),
    ([("file", ("latin1.txt", "caf\u00e9".encode("latin-1"), "text/plain"))], 400,
     "latin1.txt: not valid UTF-8"),
    ([("file", ("empty.md", b" \n ", "text/markdown"))], 400, "empty.md: the file is empty"),
    ([("file", ("big.md", b"word " * 2000, "text/markdown"))], 413, "big.md: 10000 bytes"),
])
async def test_a_bad_file_stores_nothing_of_the_request(
    client: AsyncTestClient[Any], files: list[Any], status: int, message: str
) -> None:
    good = ("file", ("good.md", b"A perfectly good document.", "text/markdown"))
    response = await client.post("/api/documents", headers=ALICE, files=[good, *files])
    assert response.status_code == status, response.text
    assert message in error_of(response)
    assert (await client.get("/api/documents", headers=ALICE)).json() == []


async def test_bad_requests_are_clear(client: AsyncTestClient[Any]) -> None:
    cases = [
        ({"source": "a.md", "text": "hello", "scope": "secret"}, 400, "unknown scope 'secret'"),
        ({"source": "a.md", "text": "hello", "scope": "global"}, 403, "global"),
        ({"source": "a.md"}, 400, "text: required"),
        ({"source": "", "text": "hello"}, 400, "source"),
    ]
    for body, status, message in cases:
        response = await client.post("/api/documents", headers=ALICE, json=body)
        assert response.status_code == status, (body, response.text)
        assert message in error_of(response)
    not_json = await client.post(
        "/api/documents", headers={**ALICE, "content-type": "application/json"}, content=b"{oops")
    assert not_json.status_code == 400 and "not valid JSON" in error_of(not_json)
    empty_query = await client.post("/api/search", headers=ALICE, json={"query": "  "})
    assert empty_query.status_code == 400 and "query is empty" in error_of(empty_query)
    bad_k = await client.post("/api/search", headers=ALICE, json={"query": "x", "k": 500})
    assert bad_k.status_code == 400 and "k must be" in error_of(bad_k)
    anonymous = await client.get("/api/documents")
    assert anonymous.status_code == 401
    assert (await client.get("/api/documents", headers=ALICE)).json() == []


async def test_global_writer_shares_documents(client: AsyncTestClient[Any]) -> None:
    ops = {"Authorization": "Bearer ops"}
    made = await client.post("/api/documents", headers=ops, json={
        "source": "handbook.md", "text": "The office opens at nine.", "scope": "global"})
    assert made.status_code == 201, made.text
    found = await client.post("/api/search", headers=BOB, json={"query": "office hours"})
    assert [p["scope"] for p in found.json()] == ["global"]
    assert (await client.delete(f"/api/documents/{made.json()[0]['id']}",
                                headers=BOB)).status_code == 404
