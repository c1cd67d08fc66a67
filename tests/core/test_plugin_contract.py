"""The plugin contract, with real pip-installed third-party plugins (tests/contract_plugins):
pluggy's calling convention, isolation of every plugin mistake, events, the image
deadline and provider checks. In every case the app runs, the faulty plugin is reported
with its reason, and the others keep working."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from core import jobs
from core.app import create_app
from core.chat import ChatRequest, Finished, start_turn
from core.events import ImageFinished, MessageCompleted
from core.plugins import Candidate, PluginHost, entrypoint_candidates
from core.protocols import ImageRequest, Principal
from core.runtime import Runtime


def only(*names: str) -> list[Candidate]:
    """The installed entry-point plugins with these names, in this order."""
    found = {c.name: c for c in entrypoint_candidates()}
    return [found[name] for name in names]


def event(job: str = "j1") -> ImageFinished:
    return ImageFinished(owner="o", job_id=job, state="succeeded")


def message(mid: str = "m1") -> MessageCompleted:
    return MessageCompleted("o", "c1", mid, "u1", "hi", "hello")


async def started(make_config: Any, *names: str, **core: Any) -> Runtime:
    runtime = Runtime(make_config(core=core), only(*names))
    await runtime.ensure_started()
    return runtime


def status(runtime: Runtime) -> dict[str, tuple[str, str | None]]:
    return {n: (r.status, r.error) for n, r in runtime.plugins.records.items()}


async def test_implementations_may_take_any_subset_of_the_arguments(
    make_config: Any, contract: Path
) -> None:
    from mami_contract import subset

    subset.CALLS.clear()
    runtime = await started(make_config, "subset")
    try:
        assert status(runtime) == {"subset": ("ok", None)}
        assert runtime.llm is not None and runtime.llm.name == "subset-parrot"
        assert subset.CALLS == ["startup"]
        assert await runtime.message_completed(message("m7")) == []
        assert subset.CALLS == ["startup", "message_completed:m7"]
        turn = await start_turn(runtime, Principal("o"), ChatRequest("/hello you", history=[]))
        items = [item async for item in turn.run()]
        assert isinstance(items[-1], Finished) and items[-1].text == "hello you"
    finally:
        await runtime.stop()


def test_pluggy_tracing_sees_every_call(
    make_config: Any, contract: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MAMI_TRACE_PLUGINS", "1")
    host = PluginHost(make_config(), only("subset"))
    with caplog.at_level(logging.INFO, logger="mami.plugins.trace"):
        registered = host.register_llm_providers(runtime=None)  # type: ignore[arg-type]
    assert [(plugin, p.name) for plugin, p in registered] == [("subset", "subset-parrot")]
    traced = "\n".join(r.getMessage() for r in caplog.records)
    assert "register_llm_providers: plugin subset" in traced
    assert "register_llm_providers [hook]" in traced  # pluggy's own trace
    assert "finish register_llm_providers" in traced


def test_hook_wrappers_are_refused_clearly(make_config: Any, contract: Path) -> None:
    host = PluginHost(make_config(), only("wrapper", "subset"))
    record = host.records["wrapper"]
    assert record.status == "failed"
    assert "hook wrappers are not supported (register_llm_providers)" in (record.error or "")
    assert host.records["subset"].status == "ok"
    assert host.pm.get_plugin("wrapper") is None


def test_a_hook_without_hookimpl_fails_its_plugin_clearly(make_config: Any,
                                                          contract: Path) -> None:
    """pluggy ignores a function that is not marked: the plugin loaded "ok" and its
    routes were never mounted, with no word anywhere."""
    host = PluginHost(make_config(), only("undecorated", "subset"))
    record = host.records["undecorated"]
    assert record.status == "failed"
    assert "register_routes named like a hook but not marked: decorate it with @hookimpl" \
        in (record.error or "")
    assert host.records["subset"].status == "ok"


async def test_a_slow_startup_is_named_while_mami_waits(
        make_config: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A startup that waits on something that does not answer held the app at "Waiting
    for application startup" without a word; now a warning names the plugin and the way
    out while mami waits, and the plugin is ok once its startup ends."""
    import types

    from core import hookimpl, plugins

    release = asyncio.Event()
    module = types.ModuleType("mami_slow_start")

    @hookimpl
    async def startup() -> None:
        await release.wait()

    module.startup = startup  # type: ignore[attr-defined]
    monkeypatch.setattr(plugins, "SLOW_HOOK_NOTICE", 0.01)
    runtime = Runtime(make_config(), [Candidate("slow-start", "tests", "test", True,
                                                lambda: module)])
    starting = asyncio.create_task(runtime.ensure_started())
    try:
        with caplog.at_level(logging.WARNING, logger="mami.plugins"):
            async with asyncio.timeout(60):  # (without the warning: a failure, not a hang)
                while "still running" not in caplog.text:
                    await asyncio.sleep(0.01)
        assert not starting.done()
        assert ("plugin slow-start: startup still running after" in caplog.text
                and "set [plugins.slow-start] enabled = false to start without it"
                in caplog.text), caplog.text
        release.set()
        await starting
        assert runtime.plugins.records["slow-start"].status == "ok"
    finally:
        starting.cancel()
        await runtime.stop()


@pytest.mark.parametrize(("plugin", "reason"), [
    ("settings-not-dataclass", "its Settings is not a dataclass"),
    ("settings-type-checking", "its Settings annotations cannot be resolved: NameError"),
    ("settings-post-init", "its Settings failed: KeyError: 'size'"),
])
async def test_a_broken_settings_class_fails_only_its_plugin(
    make_config: Any, contract: Path, plugin: str, reason: str
) -> None:
    app = create_app(make_config(), candidates=only(plugin, "subset"))
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        health = (await client.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["plugins"][plugin]["status"] == "failed"
    assert reason in health["plugins"][plugin]["error"]
    assert health["plugins"]["subset"]["status"] == "ok"


async def test_subscribers_are_isolated_from_exit_cancel_and_blocking(
    make_config: Any, contract: Path
) -> None:
    from mami_contract import blocks, recorder

    recorder.EVENTS.clear()
    recorder.THREADS.clear()
    runtime = await started(make_config, "exits", "cancels", "blocks", "recorder",
                            event_timeout=0.5)
    try:
        for job in ("j1", "j2"):
            errors = dict(await runtime.image_finished(event(job)))
            assert errors == {"exits": "SystemExit: 3", "cancels": "CancelledError",
                              "blocks": "timed out after 0.5s"}
        errors = dict(await runtime.message_completed(message("m1")))
        assert set(errors) == {"exits", "cancels", "blocks"}
        assert recorder.EVENTS == ["image_finished:j1:succeeded", "image_finished:j2:succeeded",
                                   "message_completed:m1"]
        # The synchronous subscribers ran off the event loop's thread.
        assert threading.current_thread().name not in recorder.THREADS
        assert {r.status for r in runtime.plugins.records.values()} == {"ok"}
    finally:
        blocks.RELEASE.set()
        await runtime.stop()


async def test_cancelling_the_caller_still_cancels_the_delivery(
    make_config: Any, contract: Path
) -> None:
    from mami_contract import blocks

    blocks.RELEASE.clear()
    runtime = await started(make_config, "blocks", event_timeout=60)
    try:
        delivery = asyncio.create_task(runtime.image_finished(event()))
        await asyncio.sleep(0.05)
        delivery.cancel()
        with pytest.raises(asyncio.CancelledError):
            await delivery
    finally:
        blocks.RELEASE.set()
        await runtime.stop()


def test_a_subscriber_calling_sys_exit_does_not_stop_the_server(
    make_config: Any, contract: Path, sample_plugins: Path, live_server: Any
) -> None:
    """Regression: a SystemExit from an image_finished subscriber ended `mami serve`."""
    from mami_contract import recorder

    recorder.EVENTS.clear()
    sample = next(c for c in entrypoint_candidates() if c.name == "sample")
    app = create_app(make_config(core={"image_worker": True}),
                     candidates=[*only("exits", "recorder"), sample])
    server = live_server(app)
    ids = []
    for prompt in ("one", "two"):
        reply = httpx.post(server.url + "/api/images", json={"prompt": prompt}, timeout=10)
        assert reply.status_code == 202, reply.text
        ids.append(reply.json()["id"])
    for job_id in ids:
        assert final_view(server.url, job_id)["state"] == "placeholder"
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert server.thread.is_alive()
    assert sorted(recorder.EVENTS) == sorted(f"image_finished:{i}:placeholder" for i in ids)


def final_view(url: str, job_id: str) -> dict[str, Any]:
    """The job once it is final (polled over HTTP; a job still open after a minute fails)."""
    for _ in range(600):
        view: dict[str, Any] = httpx.get(f"{url}/api/images/{job_id}", timeout=10).json()
        if view["state"] in jobs.FINAL_STATES:
            return view
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} is still {view['state']}")


async def test_a_generator_that_never_returns_fails_its_job_at_the_deadline(
    make_config: Any, contract: Path
) -> None:
    from mami_contract import stuck_images

    stuck_images.STARTED.clear()
    stuck_images.IGNORED.clear()
    stuck_images.RELEASE.clear()
    runtime = await started(make_config, "stuck-images", image_deadline=0.3)
    try:
        first = await jobs.enqueue(runtime, "o", ImageRequest(prompt="cat"))
        second = await jobs.enqueue(runtime, "o", ImageRequest(prompt="dog"))
        worker = jobs.ImageWorker(runtime, worker_id="w1", lease_seconds=5)
        for job in (first, second):
            final = await worker.run_once()
            assert final is not None and final.id == job.id
            assert final.state == "failed"
            assert "stuck gave no result within 0.3s ([core] image_deadline)" in (final.error or "")
            assert final.lease_owner is None or final.lease_until is None
        assert stuck_images.STARTED == ["cat", "dog"]  # the worker was free for the next job
        assert stuck_images.IGNORED == ["cat", "dog"]  # although it swallowed the cancel
        stored = await jobs.get_job(runtime.db, first.id)
        assert stored is not None and stored.lease_until is None
    finally:
        stuck_images.RELEASE.set()
        await runtime.stop()


async def test_a_duplicate_provider_name_fails_the_plugin_naming_both(
    make_config: Any, contract: Path
) -> None:
    runtime = await started(make_config, "subset", "duplicate-llm")
    try:
        states = status(runtime)
        failed = [name for name, (state, _) in states.items() if state == "failed"]
        assert len(failed) == 1
        other = ({"subset", "duplicate-llm"} - set(failed)).pop()
        assert states[other] == ("ok", None)
        assert states[failed[0]][1] == (
            f"llm provider name 'subset-parrot' is already registered by plugin {other}")
        assert runtime.llm is not None and runtime.llm.name == "subset-parrot"
    finally:
        await runtime.stop()


async def test_a_provider_that_breaks_its_protocol_fails_its_plugin(
    make_config: Any, contract: Path
) -> None:
    runtime = await started(make_config, "not-a-provider", "subset")
    try:
        state, error = status(runtime)["not-a-provider"]
        assert state == "failed"
        assert "does not satisfy register_retrievers" in (error or "")
        for missing in ("search: missing", "list_documents: missing"):
            assert missing in (error or "")
        assert runtime.retriever is None
        assert status(runtime)["subset"] == ("ok", None)
    finally:
        await runtime.stop()


async def test_a_chat_command_name_taken_by_core_fails_the_plugin(
    make_config: Any, contract: Path
) -> None:
    runtime = await started(make_config, "duplicate-command", "subset")
    try:
        state, error = status(runtime)["duplicate-command"]
        assert state == "failed"
        assert error == "chat command /image is already registered by plugin core.api.images"
        assert runtime.chat_commands["image"].handler.__module__ == "core.api.images"
        assert set(runtime.chat_commands) == {"image", "hello"}
    finally:
        await runtime.stop()


async def test_chat_commands_belong_to_their_runtime(make_config: Any, contract: Path) -> None:
    with_hello = await started(make_config, "subset")
    without = Runtime(make_config(), [])
    await without.ensure_started()
    try:
        assert "hello" in with_hello.chat_commands
        assert set(without.chat_commands) == {"image"}
    finally:
        await with_hello.stop()
        await without.stop()
