"""``/api/images`` under uvicorn with the in-process worker and the stand-in Forge."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx
import pytest
from PIL import Image

from core import hookimpl, jobs
from core.app import create_app, runtime_of
from core.errors import AuthError
from core.models import Conversation, ImageJob, Owner
from core.plugins import Candidate, builtin_candidates
from core.protocols import Principal
from tests.forge_standin import ForgeStandIn

ANN = {"X-Owner": "ann"}
BOB = {"X-Owner": "bob"}
# Nothing here waits for a timeout: the limits only have to let the stand-in's image in
# on a loaded machine (a job past them would end as a placeholder).
FORGE = dict(connect_timeout=10.0, read_timeout=30.0, deadline=60.0, attempts=1,
             health_timeout=10.0, progress_interval=0.05)


class HeaderAuth:
    """Trusts an ``X-Owner`` header: enough to test owner scoping, never for real use."""

    name = "header-auth"

    async def authenticate_http(self, headers: Mapping[str, str], client: str | None) -> Principal:
        owner = {k.lower(): v for k, v in headers.items()}.get("x-owner")
        if not owner:
            raise AuthError("missing X-Owner")
        return Principal(owner=owner)

    async def accept_websocket(self, socket: Any) -> Principal | None:
        return None

    async def still_valid(self, principal: Principal) -> bool:
        return True


class HeaderAuthPlugin:
    @hookimpl
    def register_authenticators(self, register: Any, runtime: Any) -> None:
        register(HeaderAuth())


def candidates(with_forge: bool = True) -> list[Candidate]:
    found = [c for c in builtin_candidates() if with_forge and c.name == "forge-image"]
    plugin: Any = HeaderAuthPlugin()
    return [*found, Candidate("header-auth", "tests", "builtin", True, lambda: plugin)]


@pytest.fixture
def forge() -> Iterator[ForgeStandIn]:
    standin = ForgeStandIn().start()
    yield standin
    standin.gate.set()
    standin.stop()


@pytest.fixture
def server(make_config: Any, forge: ForgeStandIn, live_server: Any) -> Any:
    config = make_config(core={"auth": True, "image_worker": True},
                         plugins={"forge-image": {"url": forge.url, **FORGE}})
    app = create_app(config, candidates=candidates())
    return live_server(app), runtime_of(app)


@pytest.fixture
async def http(server: Any) -> AsyncIterator[httpx.AsyncClient]:
    live, _runtime = server
    async with httpx.AsyncClient(base_url=live.url, timeout=10) as client:
        yield client


async def wait_final(http: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            body: dict[str, Any] = (await http.get(f"/api/images/{job_id}", headers=ANN)).json()
            if body["state"] in ("succeeded", "placeholder", "failed"):
                return body
            await asyncio.sleep(0.05)


async def test_create_follow_and_fetch(http: httpx.AsyncClient, forge: ForgeStandIn) -> None:
    created = await http.post("/api/images", headers=ANN,
                              json={"prompt": "a lighthouse", "width": 96, "height": 64})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["state"] == "queued" and job["url"] == f"/api/images/{job['id']}"
    final = await wait_final(http, job["id"])
    assert final["state"] == "succeeded" and final["progress"] == 1.0
    assert final["placeholder"] is False and final["image_url"] == f"/api/images/{job['id']}.png"
    png = await http.get(final["image_url"], headers=ANN)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert "x-mami-placeholder" not in png.headers
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.size == (96, 64)
    assert forge.prompts["a lighthouse"] == 1

    for path in (final["url"], final["image_url"]):
        other = await http.get(path, headers=BOB)
        assert other.status_code == 404
        assert other.json()["error"]["message"] == "image job not found"
    assert (await http.get(final["url"])).status_code == 401


async def test_list_shows_only_the_callers_jobs_newest_first(http: httpx.AsyncClient) -> None:
    ids = []
    for prompt in ("first", "second"):
        created = await http.post("/api/images", headers=ANN, json={"prompt": prompt})
        ids.append(created.json()["id"])
    await http.post("/api/images", headers=BOB, json={"prompt": "bob's"})
    listed = (await http.get("/api/images", headers=ANN)).json()
    assert [job["id"] for job in listed] == ids[::-1]
    assert [job["prompt"] for job in listed] == ["second", "first"]
    page = (await http.get("/api/images", headers=ANN, params={"limit": 1, "offset": 1})).json()
    assert [job["id"] for job in page] == ids[:1]
    bad = await http.get("/api/images", headers=ANN, params={"limit": 0})
    assert bad.status_code == 400 and "limit" in bad.json()["error"]["message"]
    assert (await http.get("/api/images")).status_code == 401


async def test_placeholder_is_marked(http: httpx.AsyncClient, forge: ForgeStandIn) -> None:
    forge.set_mode("oom")
    job = (await http.post("/api/images", headers=ANN, json={"prompt": "too big"})).json()
    final = await wait_final(http, job["id"])
    assert final["state"] == "placeholder" and final["placeholder"] is True
    assert final["placeholder_reason"] == "out_of_memory"
    png = await http.get(final["image_url"], headers=ANN)
    assert png.status_code == 200 and png.headers["x-mami-placeholder"] == "out_of_memory"
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.info["mami:placeholder"] == "out_of_memory"


async def test_image_of_unfinished_job_is_409(http: httpx.AsyncClient, forge: ForgeStandIn) -> None:
    forge.gate.clear()
    job = (await http.post("/api/images", headers=ANN, json={"prompt": "wait"})).json()
    async with asyncio.timeout(60):
        while not forge.calls["txt2img"]:
            await asyncio.sleep(0.05)
    status = (await http.get(f"/api/images/{job['id']}", headers=ANN)).json()
    assert status["state"] == "running" and status["image_url"] is None
    early = await http.get(f"/api/images/{job['id']}.png", headers=ANN)
    assert early.status_code == 409 and "running" in early.json()["error"]["message"]
    forge.gate.set()
    assert (await wait_final(http, job["id"]))["state"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"prompt": "   "}, "prompt: must not be empty"),
        ({"prompt": "x", "width": 65}, "width: must be a multiple of 8"),
        ({"prompt": "x", "height": 4096}, "height: must be a multiple of 8"),
        ({"prompt": "x", "steps": 0}, "steps: must be from 1 to 150"),
        ({"prompt": "x" * 2001}, "prompt: at most 2000 characters"),
        ({"prompt": "x", "conversation_id": "someone-elses"}, "conversation not found"),
        ({"width": 64}, "Validation failed"),
        ({"prompt": 5}, "Validation failed"),
        ({"prompt": "x", "cfg_scalee": 7}, "unknown field: cfg_scalee (known: "),
        ({"prompt": "x", "a": 1, "b": 2}, "unknown fields: a, b"),
        ({"prompt": "x", "width": "512"}, "width: expected an integer, got a string"),
        ({"prompt": "x", "steps": True}, "steps: Expected `int`, got `bool`"),
        ({"prompt": "x", "cfg_scale": "7"}, "cfg_scale: expected a number or null"),
        ({"prompt": "x", "negative_prompt": "n" * 2001},
         "negative_prompt: at most 2000 characters"),
        ({"prompt": "x", "sampler": "s" * 201}, "sampler: at most 200 characters"),
        ({"prompt": "x", "checkpoint": "c" * 201}, "checkpoint: at most 200 characters"),
        ({"prompt": "x", "scheduler": "c" * 201}, "scheduler: at most 200 characters"),
        ({"prompt": "x", "seed": 2**32}, "seed: must be -1 (random) or from 0 to 4294967295"),
        ({"prompt": "x", "seed": -2}, "seed: must be -1"),
        ({"prompt": "x", "cfg_scale": 99}, "cfg_scale: must be from 1 to 30, got 99"),
        ({"prompt": "x", "distilled_cfg_scale": 31}, "distilled_cfg_scale: must be from 0 to 30"),
    ],
)
async def test_bad_requests_write_nothing(
    http: httpx.AsyncClient, server: Any, body: dict[str, Any], message: str
) -> None:
    _live, runtime = server
    async with runtime.db.session() as session:
        session.add(Owner(id="bob"))
        await session.commit()
        session.add(Conversation(id="someone-elses", owner_id="bob"))
        await session.commit()
    response = await http.post("/api/images", headers=ANN, json=body)
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert message in error["message"] or message in str(error.get("details"))
    async with runtime.db.session() as session:
        assert await session.get(ImageJob, "x") is None
        from sqlmodel import func, select

        assert (await session.exec(select(func.count()).select_from(ImageJob))).one() == 0


async def test_new_parameters_reach_forge(http: httpx.AsyncClient, forge: ForgeStandIn) -> None:
    body = {"prompt": "flux", "width": 64, "height": 64, "cfg_scale": 1, "scheduler": "simple",
            "distilled_cfg_scale": 3.5, "sampler": "Euler", "checkpoint": "dream-v2",
            "seed": 2**32 - 1}
    created = await http.post("/api/images", headers=ANN, json=body)
    assert created.status_code == 202, created.text
    assert (await wait_final(http, created.json()["id"]))["state"] == "succeeded"
    sent = forge.last_payload
    assert (sent["cfg_scale"], sent["scheduler"], sent["distilled_cfg_scale"],
            sent["sampler_name"], sent["seed"]) == (1, "simple", 3.5, "Euler", 2**32 - 1)
    assert sent["override_settings"] == {"sd_model_checkpoint": "dream-v2"}


async def test_health_shows_the_breaker(http: httpx.AsyncClient) -> None:
    health = (await http.get("/health", headers=ANN)).json()
    forge = health["plugins"]["forge-image"]["health"]
    assert forge["status"] == "ok" and forge["breaker"]["state"] == "closed"
    anonymous = (await http.get("/health")).json()["plugins"]["forge-image"]
    assert anonymous == {"status": "ok"}  # no URL, no breaker for callers without a token


async def test_no_image_plugin_is_503(make_config: Any, live_server: Any) -> None:
    app = create_app(make_config(core={"auth": True}), candidates=candidates(with_forge=False))
    live = live_server(app)
    async with httpx.AsyncClient(base_url=live.url) as client:
        response = await client.post("/api/images", headers=ANN, json={"prompt": "x"})
    assert response.status_code == 503 and "images" in response.json()["error"]["message"]


async def chat_image(ws_url: str, prompt: str, conversation_id: str | None = None
                     ) -> tuple[str, dict[str, Any], str]:
    """Send ``/image <prompt>`` on a chat socket: the reply text, the pushed event and
    the conversation the turn was stored in."""
    import json

    from websockets.asyncio.client import connect

    async with connect(ws_url + "/ws/chat") as ws:
        await ws.send(json.dumps({"type": "message", "content": f"/image {prompt}",
                                  "conversation_id": conversation_id}))
        text = ""
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if event["type"] == "start":
                conversation = event["conversation_id"]
            elif event["type"] == "delta":
                text += event["text"]
            elif event["type"] == "end":
                assert event["status"] == "complete"
                break
        pushed = json.loads(await asyncio.wait_for(ws.recv(), 30))
    return text, pushed, conversation


@pytest.mark.parametrize("worker", ["in-process", "separate"])
async def test_image_command_in_chat_pushes_the_result(
    make_config: Any, live_server: Any, forge: ForgeStandIn, worker: str
) -> None:
    """The reply comes at once; the finished image reaches the socket, whether the
    server's own worker or another worker (here: another runtime) did the job."""
    from core.jobs import ImageWorker
    from core.runtime import Runtime
    from tests.chat_support import LOCAL

    forge_only = [c for c in builtin_candidates() if c.name == "forge-image"]
    config = make_config(core={"image_worker": worker == "in-process"},
                         plugins={"forge-image": {"url": forge.url, **FORGE}})
    app = create_app(config, candidates=[LOCAL, *forge_only])
    live = live_server(app)
    other: ImageWorker | None = None
    if worker == "separate":
        runtime = Runtime(config, forge_only)
        await runtime.ensure_started()
        other = ImageWorker(runtime, poll_interval=0.05)
        other.start()
    try:
        text, pushed, conversation = await chat_image(live.ws_url, "a blue whale")
        again, pushed_again, same = await chat_image(live.ws_url, "a green whale",
                                                     conversation)
    finally:
        if other is not None:
            await other.stop()
            await other.runtime.stop()
    assert text.startswith('Creating an image of "a blue whale" (job ')
    job_id = pushed["job_id"]
    assert job_id in text
    assert pushed == {"type": "image", "job_id": job_id, "state": "succeeded",
                      "url": f"/api/images/{job_id}.png", "placeholder_reason": None}
    async with httpx.AsyncClient(base_url=live.url) as client:
        png = await client.get(pushed["url"])
        views = [(await client.get(f"/api/images/{p['job_id']}")).json()
                 for p in (pushed, pushed_again)]
        chat = (await client.get(f"/api/conversations/{conversation}/messages")).json()
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # the new conversation of the first turn, then the one the second turn named
    assert same == conversation
    assert [v["conversation_id"] for v in views] == [conversation, conversation]
    assert [m["content"] for m in chat][::2] == ["/image a blue whale", "/image a green whale"]
    assert forge.prompts["a blue whale"] == forge.prompts["a green whale"] == 1
    assert pushed_again["job_id"] in again and pushed_again["state"] == "succeeded"
    assert len(runtime_of(app).state["image_job_callbacks"]) == 1  # installed once
    if other is not None:
        # the server's own worker was off
        assert other.completed == [job_id, pushed_again["job_id"]]


async def test_image_command_without_prompt_explains(make_config: Any, live_server: Any) -> None:
    import json

    from websockets.asyncio.client import connect

    from tests.chat_support import LOCAL

    forge_only = [c for c in builtin_candidates() if c.name == "forge-image"]
    config = make_config(plugins={"forge-image": {"url": "http://127.0.0.1:9"}})
    live = live_server(create_app(config, candidates=[LOCAL, *forge_only]))
    async with connect(live.ws_url + "/ws/chat") as ws:
        await ws.send(json.dumps({"type": "message", "content": "/image   "}))
        text = ""
        while (event := json.loads(await ws.recv()))["type"] != "end":
            text += event.get("text", "")
    assert text == ("I can't make that image: prompt: must not be empty. "
                    "Usage: /image <prompt>")
    async with httpx.AsyncClient(base_url=live.url) as client:
        health = (await client.get("/health")).json()
    assert health["plugins"]["forge-image"]["status"] == "ok"


async def test_deleting_a_conversation_deletes_its_jobs_and_images(
        http: httpx.AsyncClient, forge: ForgeStandIn, server: Any) -> None:
    """Issue 18: a deleted conversation's image jobs and stored images go with it, except
    placeholders, which are stored once per content and shared."""
    _live, runtime = server
    folder = jobs.image_store(runtime).folder
    created = await http.post("/api/conversations", headers=ANN, json={"title": "pictures"})
    cid, keep = created.json()["id"], (await http.post("/api/conversations", headers=ANN)).json()
    made = []
    for prompt, mode, conversation in (("a cat", "ok", cid), ("too big", "oom", cid),
                                       ("a dog", "ok", keep["id"])):
        forge.set_mode(mode)
        job = (await http.post("/api/images", headers=ANN, json={
            "prompt": prompt, "width": 64, "height": 64, "conversation_id": conversation})).json()
        made.append(await wait_final(http, job["id"]))
    cat, big, dog = made
    assert (cat["state"], big["state"], dog["state"]) == ("succeeded", "placeholder", "succeeded")
    assert list(folder.glob(f"{cat['id']}.*.png")) and list(folder.glob("placeholder-*.png"))
    assert (await http.delete(f"/api/conversations/{cid}", headers=BOB)).status_code == 404
    assert (await http.get(cat["url"], headers=ANN)).status_code == 200
    assert (await http.delete(f"/api/conversations/{cid}", headers=ANN)).status_code == 204
    for job in (cat, big):
        assert (await http.get(job["url"], headers=ANN)).status_code == 404
    assert list(folder.glob(f"{cat['id']}.*.png")) == []
    assert list(folder.glob("placeholder-*.png"))  # shared with other conversations' jobs
    assert (await http.get(dog["url"], headers=ANN)).json()["state"] == "succeeded"
    assert list(folder.glob(f"{dog['id']}.*.png"))
