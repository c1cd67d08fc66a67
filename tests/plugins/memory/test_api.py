"""``/api/memories`` under uvicorn with httpx, authenticated per owner."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from core.app import create_app
from core.runtime import Runtime
from tests.plugins.memory.conftest import candidates, store_of

FACTS = ["I am allergic to peanuts", "My daughter is called Mia", "I work as a nurse"]


def as_owner(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {owner}"}


@pytest.fixture
def server(make_config: Any, live_server: Any) -> Any:
    """The app with the memory plugin and a header authenticator; alice has three
    memories (one seen twice), bob one, written beforehand by another runtime on the
    same database and Chroma directory."""
    config = make_config(core={"auth": True})

    async def seed() -> None:
        runtime = Runtime(config, candidates())
        await runtime.ensure_started()
        store = store_of(runtime)
        for fact in FACTS:
            await store.remember("alice", fact, "m-alice")
        await store.remember("alice", "I am allergic to peanuts!", "m-again")
        await store.remember("bob", "I work as a nurse", "m-bob")
        await runtime.stop()

    asyncio.run(seed())
    return live_server(create_app(config, candidates=candidates(auth=True)))


def test_list_is_owner_scoped_and_paged(server: Any) -> None:
    alice = httpx.get(server.url + "/api/memories", headers=as_owner("alice")).json()
    assert alice["total"] == 3 and (alice["limit"], alice["offset"]) == (100, 0)
    assert alice["data"][0]["text"] == "I am allergic to peanuts"  # most recently seen
    assert alice["data"][0]["seen_count"] == 2
    assert sorted(m["text"] for m in alice["data"]) == sorted(FACTS)
    page = httpx.get(server.url + "/api/memories", params={"limit": 2, "offset": 2},
                     headers=as_owner("alice")).json()
    assert [m["id"] for m in page["data"]] == [alice["data"][2]["id"]] and page["total"] == 3
    beyond = httpx.get(server.url + "/api/memories", params={"offset": 10},
                       headers=as_owner("alice")).json()
    assert (beyond["data"], beyond["total"]) == ([], 3)
    bob = httpx.get(server.url + "/api/memories", headers=as_owner("bob")).json()
    assert [m["text"] for m in bob["data"]] == ["I work as a nurse"]
    assert bob["data"][0]["id"] not in {m["id"] for m in alice["data"]}


def test_history_shows_each_decision(server: Any) -> None:
    listed = httpx.get(server.url + "/api/memories", headers=as_owner("alice")).json()
    peanuts = listed["data"][0]["id"]
    history = httpx.get(f"{server.url}/api/memories/{peanuts}/history",
                        headers=as_owner("alice")).json()
    assert history["memory_id"] == peanuts
    assert [(d["action"], d["text"], d["similarity"], d["matched_memory_id"],
             d["source_message_id"]) for d in history["data"]] == [
        ("added", "I am allergic to peanuts", None, None, "m-alice"),
        ("skipped", "I am allergic to peanuts!", 1.0, peanuts, "m-again"),
    ]
    assert all(d["at"] for d in history["data"])
    # Bob cannot read alice's history.
    other = httpx.get(f"{server.url}/api/memories/{peanuts}/history", headers=as_owner("bob"))
    assert other.status_code == 404 and "not found" in other.json()["error"]["message"]


def test_delete_one_and_erase_all(server: Any) -> None:
    listed = httpx.get(server.url + "/api/memories", headers=as_owner("alice")).json()
    target = listed["data"][1]["id"]
    assert httpx.delete(f"{server.url}/api/memories/{target}",
                        headers=as_owner("bob")).status_code == 404
    assert httpx.delete(f"{server.url}/api/memories/{target}",
                        headers=as_owner("alice")).status_code == 204
    assert httpx.delete(f"{server.url}/api/memories/{target}",
                        headers=as_owner("alice")).status_code == 404
    assert httpx.get(f"{server.url}/api/memories/{target}/history",
                     headers=as_owner("alice")).status_code == 404
    erased = httpx.delete(server.url + "/api/memories", headers=as_owner("alice"))
    assert erased.status_code == 200 and erased.json() == {"deleted": 2}
    assert httpx.get(server.url + "/api/memories", headers=as_owner("alice")).json()["total"] == 0
    assert httpx.get(server.url + "/api/memories", headers=as_owner("bob")).json()["total"] == 1


@pytest.mark.parametrize(("method", "path", "params", "status", "message"), [
    ("GET", "/api/memories", {"limit": 0}, 400, "limit"),
    ("GET", "/api/memories", {"limit": 5000}, 400, "limit"),
    ("GET", "/api/memories", {"offset": -1}, 400, "offset"),
    ("GET", "/api/memories", {"offset": 2**63}, 400, "offset"),
    ("GET", "/api/memories", {"limit": "many"}, 400, "limit"),
    ("DELETE", "/api/memories/not%20an%20id!", {}, 400, "invalid memory id"),
    ("GET", "/api/memories/" + "a" * 65 + "/history", {}, 400, "invalid memory id"),
    ("GET", "/api/memories/0123456789abcdef0123456789abcdef/history", {}, 404, "not found"),
])
def test_bad_input_gets_a_clear_4xx(server: Any, method: str, path: str,
                                    params: dict[str, Any], status: int, message: str) -> None:
    response = httpx.request(method, server.url + path, params=params, headers=as_owner("alice"))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in (error["message"] + str(error.get("details", ""))).lower()
    assert httpx.get(server.url + "/api/memories", headers=as_owner("alice")).json()["total"] == 3


def test_unauthenticated_and_disabled(server: Any, make_config: Any, live_server: Any) -> None:
    response = httpx.get(server.url + "/api/memories")
    assert response.status_code == 401
    schema = httpx.get(server.url + "/schema/openapi.json").json()
    assert {"/api/memories", "/api/memories/{memory_id}",
            "/api/memories/{memory_id}/history"} <= set(schema["paths"])
    off = live_server(create_app(make_config(plugins={"memory": {"enabled": False}}),
                                 candidates=candidates(memory=True)))
    disabled = httpx.get(off.url + "/api/memories")
    assert disabled.status_code == 503 and "memory" in disabled.json()["error"]["message"]
