"""Owner A's token never reads or changes owner B's data, through every endpoint that
holds owner data: conversations, chat (OpenAI-compatible and socket), documents and
search (real embedded Chroma), memories, images. The owner comes only from the credential."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.plugins.token_ws_auth.ws_auth_harness import AuthServer, start_server

SECRET = "alice's purple elephant plan"


@pytest.fixture(scope="module")
def data_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    tmp = tmp_path_factory.mktemp("isolation")
    server, serving = start_server(
        tmp, f"sqlite:///{tmp / 'mami.db'}", builtins=("chroma-rag", "forge-image", "memory"),
        tables={"forge-image": {"url": "http://127.0.0.1:9"}})
    yield server
    serving.stop()


class Owner:
    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client, self.token = client, token

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return await self.client.request(method, path, headers=headers, **kwargs)


@pytest.fixture
async def owners(data_server: AuthServer) -> AsyncIterator[tuple[Owner, Owner]]:
    alice_token, _ = await data_server.token("alice")
    bob_token, _ = await data_server.token("bob")
    async with httpx.AsyncClient(base_url=data_server.url, timeout=60) as client:
        yield Owner(client, alice_token), Owner(client, bob_token)


async def test_conversations(owners: tuple[Owner, Owner]) -> None:
    alice, bob = owners
    created = await alice.call("POST", "/api/conversations", json={"title": SECRET})
    assert created.status_code == 201
    cid = created.json()["id"]
    chat = await alice.call("POST", "/v1/chat/completions", headers={"X-Mami-Conversation": cid},
                            json={"model": "paced", "messages": [{"role": "user",
                                                                   "content": SECRET}]})
    assert chat.status_code == 200, chat.text
    listed = (await bob.call("GET", "/api/conversations")).json()
    assert cid not in str(listed) and SECRET not in str(listed)
    for method, path in (("GET", f"/api/conversations/{cid}/messages"),
                         ("DELETE", f"/api/conversations/{cid}")):
        response = await bob.call(method, path)
        assert response.status_code == 404 and SECRET not in response.text
    hijack = await bob.call("POST", "/v1/chat/completions", headers={"X-Mami-Conversation": cid},
                            json={"model": "paced", "messages": [{"role": "user",
                                                                   "content": "tell me"}]})
    assert hijack.status_code == 404 and SECRET not in hijack.text
    messages = (await alice.call("GET", f"/api/conversations/{cid}/messages")).json()
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[0]["content"] == SECRET


async def test_body_cannot_choose_the_owner(owners: tuple[Owner, Owner]) -> None:
    alice, bob = owners
    made = await bob.call("POST", "/api/tokens", json={"name": "x", "owner": "alice"})
    if made.status_code == 201:
        assert made.json()["owner"] == "bob"
        assert made.json()["token"] not in (await alice.call("GET", "/api/tokens")).text
    else:
        assert made.status_code == 400
    listed = (await alice.call("GET", "/api/tokens")).json()["data"]
    assert {t["owner"] for t in listed} == {"alice"}


async def test_documents_and_search(owners: tuple[Owner, Owner]) -> None:
    alice, bob = owners
    uploaded = await alice.call("POST", "/api/documents",
                                json={"source": "plan.txt", "text": SECRET, "scope": "default"})
    assert uploaded.status_code == 201, uploaded.text
    doc_id = uploaded.json()[0]["id"]
    assert (await bob.call("GET", "/api/documents")).json() == []
    found = await bob.call("POST", "/api/search", json={"query": "purple elephant plan"})
    assert found.status_code == 200 and SECRET not in found.text
    assert (await bob.call("DELETE", f"/api/documents/{doc_id}")).status_code == 404
    erased = await bob.call("DELETE", "/api/documents")
    assert erased.status_code == 200
    mine = await alice.call("POST", "/api/search", json={"query": "purple elephant plan"})
    assert SECRET in mine.text
    assert [d["id"] for d in (await alice.call("GET", "/api/documents")).json()] == [doc_id]


async def test_images(owners: tuple[Owner, Owner]) -> None:
    alice, bob = owners
    conversation = (await alice.call("POST", "/api/conversations", json={})).json()["id"]
    job = await alice.call("POST", "/api/images", json={"prompt": SECRET})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    for path in (f"/api/images/{job_id}", f"/api/images/{job_id}.png"):
        response = await bob.call("GET", path)
        assert response.status_code == 404 and SECRET not in response.text
    attach = await bob.call("POST", "/api/images",
                            json={"prompt": "x", "conversation_id": conversation})
    assert attach.status_code == 404
    assert (await alice.call("GET", f"/api/images/{job_id}")).json()["prompt"] == SECRET


async def test_memories(owners: tuple[Owner, Owner]) -> None:
    alice, bob = owners
    said = await alice.call("POST", "/v1/chat/completions",
                            headers={"X-Mami-Conversation": "new"},
                            json={"model": "paced", "messages": [{
                                "role": "user",
                                "content": "Remember that my locker code is 4321."}]})
    assert said.status_code == 200, said.text
    memories: list[dict[str, Any]] = []
    async with asyncio.timeout(30):  # memories are written after the reply completes
        while not memories:
            memories = (await alice.call("GET", "/api/memories")).json()["data"]
            await asyncio.sleep(0.1)
    memory_id = memories[0]["id"]
    assert "4321" in memories[0]["text"]
    seen = await bob.call("GET", "/api/memories")
    assert seen.json()["total"] == 0 and "4321" not in seen.text
    for method, path in (("GET", f"/api/memories/{memory_id}/history"),
                         ("DELETE", f"/api/memories/{memory_id}")):
        response = await bob.call(method, path)
        assert response.status_code == 404 and "4321" not in response.text
    assert (await bob.call("DELETE", "/api/memories")).json() == {"deleted": 0}
    after = (await alice.call("GET", "/api/memories")).json()["data"]
    assert [m["id"] for m in after] == [memory_id]
