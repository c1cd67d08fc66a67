"""The image job queue on SQLite and PostgreSQL, with the stand-in Forge on loopback and
real worker processes."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import stamina

from core import hookimpl, migrations
from core import jobs as jobs_module
from core.config import Config
from core.jobs import (
    FINAL_STATES,
    ImageWorker,
    add_image_callback,
    claim,
    complete,
    enqueue,
    get_job,
)
from core.models import ImageJob
from core.plugins import Candidate, builtin_candidates
from core.protocols import ImageRequest
from core.runtime import Runtime
from tests.forge_standin import ForgeStandIn

# No test here waits for a Forge timeout: the limits only have to let every image in on
# a loaded machine (a request held at the stand-in's gate while a worker process starts
# must not time out and be sent again).
FORGE_QUICK = dict(connect_timeout=10.0, read_timeout=30.0, deadline=60.0, attempts=2,
                   backoff_initial=0.01, backoff_max=0.02, backoff_jitter=0.01,
                   progress_interval=0.05, breaker_cooldown=0.5)


def request(prompt: str) -> ImageRequest:
    return ImageRequest(prompt=prompt, width=64, height=64, steps=2, seed=3)


def forge_candidates(*extra: Any) -> list[Candidate]:
    found = [c for c in builtin_candidates() if c.name == "forge-image"]
    for i, plugin in enumerate(extra):
        found.append(Candidate(f"test-{i}", "tests", "builtin", True, loader(plugin)))
    return found


def loader(plugin: Any) -> Any:
    return lambda: plugin


@pytest.fixture
def forge() -> Iterator[ForgeStandIn]:
    standin = ForgeStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture
def job_config(make_config: Any, database_url: str, forge: ForgeStandIn) -> Config:
    migrations.upgrade_all(database_url)
    return make_config(core={"database_url": database_url, "event_timeout": 0.3},
                       plugins={"forge-image": {"url": forge.url, **FORGE_QUICK}})


@pytest.fixture
async def runtime(job_config: Config) -> AsyncIterator[Runtime]:
    rt = Runtime(job_config, forge_candidates())
    await rt.ensure_started()
    yield rt
    await rt.stop()


async def test_claim_is_fifo_exclusive_and_completes_once(runtime: Runtime) -> None:
    first = await enqueue(runtime, "ann", request("one"))
    second = await enqueue(runtime, "ann", request("two"))
    a = await claim(runtime.db, "A", 30)
    b = await claim(runtime.db, "B", 30)
    assert (a and a.id, b and b.id) == (first.id, second.id)
    assert await claim(runtime.db, "C", 30) is None
    assert a is not None and a.state == "running" and a.attempts == 1 and a.lease_owner == "A"
    assert await complete(runtime.db, a.id, "B", "succeeded") is None  # not B's lease
    done = await complete(runtime.db, a.id, "A", "succeeded", result_path="x.png")
    assert done is not None and done.state == "succeeded" and done.finished_at is not None
    assert await complete(runtime.db, a.id, "A", "failed") is None  # already final
    assert (await get_job(runtime.db, a.id, owner="bob")) is None
    assert (await get_job(runtime.db, a.id, owner="ann")).state == "succeeded"  # type: ignore[union-attr]


async def test_expired_lease_is_claimed_again_and_stale_worker_is_refused(
    runtime: Runtime,
) -> None:
    job = await enqueue(runtime, "ann", request("lease"))
    assert (await claim(runtime.db, "dead", 1.0)) is not None
    assert await claim(runtime.db, "B", 30) is None  # lease still valid
    await asyncio.sleep(1.1)
    again = await claim(runtime.db, "B", 30)
    assert again is not None and again.id == job.id and again.attempts == 2
    assert await complete(runtime.db, job.id, "dead", "succeeded") is None
    assert await complete(runtime.db, job.id, "B", "succeeded") is not None


async def test_worker_produces_images_and_placeholders(
    runtime: Runtime, forge: ForgeStandIn
) -> None:
    good = await enqueue(runtime, "ann", request("a cat"))
    worker = ImageWorker(runtime, worker_id="w1", lease_seconds=5)
    await worker.run(until_idle=True)
    forge.set_mode("oom")
    bad = await enqueue(runtime, "ann", request("a dog"))
    await worker.run(until_idle=True)
    jobs = {j.id: await get_job(runtime.db, j.id) for j in (good, bad)}
    ok, placeholder = jobs[good.id], jobs[bad.id]
    assert ok is not None and ok.state == "succeeded" and ok.progress == 1.0
    assert placeholder is not None and placeholder.state == "placeholder"
    assert placeholder.placeholder_reason == "out_of_memory" and "CUDA" in (placeholder.error or "")
    for job in (ok, placeholder):
        assert job.result_path is not None
        path = runtime.config.data_dir / "images" / job.result_path
        assert path.read_bytes().startswith(b"\x89PNG")
    assert worker.completed == [good.id, bad.id]


async def test_a_job_costs_a_transaction_per_step_and_an_idle_worker_none(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim and complete are one transaction each, and completing also tells the worker
    whether another job waits: it takes the next at once (its poll is an hour here) and
    looks no more after the last (the fail-fast path is three transactions a job)."""
    transactions: list[Any] = []
    renewals: list[str] = []
    run, renew = runtime.db.run, jobs_module.renew

    async def counted(work: Any) -> Any:
        transactions.append(work)
        return await run(work)

    async def counted_renew(db: Any, job_id: str, *args: Any) -> bool:
        renewals.append(job_id)
        return await renew(db, job_id, *args)

    first = await enqueue(runtime, "ann", request("one"))
    second = await enqueue(runtime, "ann", request("two"))
    monkeypatch.setattr(runtime.db, "run", counted)
    monkeypatch.setattr(jobs_module, "renew", counted_renew)
    worker = ImageWorker(runtime, poll_interval=3600).start()
    try:
        await wait_until(lambda: worker.completed == [first.id, second.id])
        await asyncio.sleep(0.5)
        # claim, complete (+ a job waits), claim, complete (+ none waits); then nothing
        assert len(transactions) - len(renewals) == 4
    finally:
        await worker.stop()


async def test_exhausted_attempts_fail_the_job(runtime: Runtime) -> None:
    job = await enqueue(runtime, "ann", request("cursed"), max_attempts=1)
    await claim(runtime.db, "dead", 0.01)
    await asyncio.sleep(0.05)
    worker = ImageWorker(runtime, worker_id="w2")
    final = await worker.run_once()
    assert final is not None and final.id == job.id and final.state == "failed"
    assert "claimed 1 times" in (final.error or "")


class RaisingGenerator:
    name = "raising"

    async def generate(self, request: ImageRequest, progress: Any = None) -> Any:
        raise RuntimeError("generator bug")

    async def health(self) -> dict[str, Any]:
        return {}


async def test_generator_that_raises_fails_the_job_and_the_queue_goes_on(
    runtime: Runtime,
) -> None:
    runtime.providers["images"] = {"raising": RaisingGenerator()}
    jobs = [await enqueue(runtime, "ann", request(f"p{i}")) for i in range(3)]
    await ImageWorker(runtime).run(until_idle=True)
    for job in jobs:
        final = await get_job(runtime.db, job.id)
        assert final is not None and final.state == "failed"
        assert final.error == "RuntimeError: generator bug" and final.result_path is None


class FailingSubscribers:
    """``image_finished`` subscribers: one raises, one hangs past the event timeout."""

    @hookimpl
    def image_finished(self, event: Any, runtime: Any) -> None:
        raise ValueError(f"subscriber broke on {event.job_id}")


class HangingSubscriber:
    @hookimpl
    async def image_finished(self, event: Any, runtime: Any) -> None:
        await asyncio.sleep(60)


async def test_every_callback_raises_and_no_job_is_lost(job_config: Config) -> None:
    runtime = Runtime(job_config, forge_candidates(FailingSubscribers(), HangingSubscriber()))
    await runtime.ensure_started()
    try:
        def sync_raises(job: ImageJob) -> None:
            raise RuntimeError("sync callback")

        async def async_raises(job: ImageJob) -> None:
            raise KeyError(job.id)

        async def hangs(job: ImageJob) -> None:
            await asyncio.sleep(60)

        for callback in (sync_raises, async_raises, hangs):
            add_image_callback(runtime, callback)
        jobs = [await enqueue(runtime, "ann", request(f"job {i}")) for i in range(6)]
        worker = ImageWorker(runtime, callback_timeout=0.2)
        await asyncio.wait_for(worker.run(until_idle=True), 30)
        assert sorted(worker.completed) == sorted(j.id for j in jobs)
        for job in jobs:
            final = await get_job(runtime.db, job.id)
            assert final is not None and final.state == "succeeded"
            errors = {e.get("callback") or e.get("plugin"): e["error"]
                      for e in final.callback_errors}
            assert len(final.callback_errors) == 5, final.callback_errors
            assert errors[sync_raises.__qualname__] == "RuntimeError: sync callback"
            assert errors[hangs.__qualname__] == "timed out after 0.2s"
            assert errors["test-0"] == f"ValueError: subscriber broke on {job.id}"
            assert errors["test-1"] == "timed out after 0.3s"
    finally:
        await runtime.stop()


def worker_process(config_path: Path, worker_id: str, *args: str) -> subprocess.Popen[str]:
    """A real ``mami worker`` in its own process."""
    env = {**os.environ, "MAMI_CONFIG": str(config_path)}
    return subprocess.Popen(
        [sys.executable, "-c", "from core.cli import main; raise SystemExit(main())",
         "worker", "--id", worker_id, "--poll", "0.05", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def write_config(path: Path, database_url: str, forge_url: str, data_dir: Path) -> Path:
    lines = ["[core]", f'database_url = "{database_url}"', f'data_dir = "{data_dir}"',
             "auth = false", "[plugins.forge-image]", f'url = "{forge_url}"']
    lines += [f"{key} = {value}" for key, value in FORGE_QUICK.items()]
    for name in _other_builtins():
        lines += [f"[plugins.{name}]", "enabled = false"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _other_builtins() -> list[str]:
    return [c.name for c in builtin_candidates() if c.name != "forge-image"]


async def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def all_jobs(runtime: Runtime) -> list[ImageJob]:
    from sqlmodel import select

    async with runtime.db.session() as session:
        return list((await session.exec(select(ImageJob))).all())


@pytest.mark.slow
async def test_worker_killed_mid_job_loses_nothing(
    runtime: Runtime, forge: ForgeStandIn, tmp_path: Path, database_url: str
) -> None:
    forge.set_mode("slow")
    forge.delay = 1.0
    config = write_config(tmp_path / "w.toml", database_url, forge.url, runtime.config.data_dir)
    jobs = [await enqueue(runtime, "ann", request(f"kill {i}")) for i in range(3)]
    victim = worker_process(config, "victim", "--lease", "1")

    async def victim_is_working() -> bool:
        return any(j.lease_owner == "victim" and j.state == "running"
                   for j in await all_jobs(runtime))

    try:
        await wait_until(victim_is_working)
        await wait_until(lambda: forge.calls["txt2img"] >= 1)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    # the victim's 1 s lease expires soon; the survivor's own never does while it works
    survivor = worker_process(config, "survivor", "--lease", "30", "--until-idle")
    output, _ = survivor.communicate(timeout=60)
    assert survivor.returncode == 0, output
    final = {j.id: j for j in await all_jobs(runtime)}
    assert {j.id for j in jobs} == set(final)
    assert all(j.state == "succeeded" and j.lease_owner == "survivor" for j in final.values())
    assert sorted(j.attempts for j in final.values()) == [1, 1, 2]  # the killed one ran twice


@pytest.mark.slow
async def test_two_worker_processes_share_one_queue(
    runtime: Runtime, forge: ForgeStandIn, tmp_path: Path, database_url: str
) -> None:
    config = write_config(tmp_path / "w.toml", database_url, forge.url, runtime.config.data_dir)
    jobs = [await enqueue(runtime, "ann", request(f"shared {i}")) for i in range(30)]
    forge.gate.clear()  # hold generation until both workers have claimed a job
    workers = [worker_process(config, name, "--until-idle") for name in ("A", "B")]
    try:
        await wait_until(lambda: forge.calls["txt2img"] >= 2)
        forge.gate.set()
        outputs = [w.communicate(timeout=90)[0] for w in workers]
    finally:
        forge.gate.set()
        for w in workers:
            if w.poll() is None:
                w.kill()
    assert [w.returncode for w in workers] == [0, 0], outputs
    final = await all_jobs(runtime)
    assert len(final) == len(jobs)
    assert all(j.state == "succeeded" and j.attempts == 1 for j in final)
    by_worker = {name: sum(j.lease_owner == name for j in final) for name in ("A", "B")}
    assert by_worker["A"] >= 1 and by_worker["B"] >= 1 and sum(by_worker.values()) == 30
    assert set(forge.prompts.values()) == {1}  # each job generated exactly once
    assert len(forge.prompts) == 30
    assert all(j.state in FINAL_STATES for j in final)


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Queue tests are about the queue: retries are the generator tests' business."""
    stamina.set_testing(True, attempts=2, cap=True)
    yield
    stamina.set_testing(False)


async def test_no_in_process_worker_on_lambda_or_when_switched_off(job_config: Config) -> None:
    from core.jobs import start_image_worker

    assert start_image_worker(Runtime(job_config, forge_candidates(), serverless=True)) is None
    job_config.core.image_worker = False
    assert start_image_worker(Runtime(job_config, forge_candidates())) is None
    job_config.core.image_worker = True
    worker = start_image_worker(Runtime(job_config, forge_candidates()))
    assert worker is not None
    await worker.stop()


async def test_lease_is_renewed_and_progress_stored_while_a_long_job_runs(
    runtime: Runtime, forge: ForgeStandIn
) -> None:
    """A job longer than its lease is not stolen: the worker renews the lease, and the
    heartbeat stores the progress Forge reports."""
    forge.set_mode("slow")
    forge.delay = 1.5  # over twice the lease
    job = await enqueue(runtime, "ann", request("long"))
    first = ImageWorker(runtime, worker_id="first", lease_seconds=0.6)
    thief = ImageWorker(runtime, worker_id="thief", lease_seconds=0.6)
    running = asyncio.create_task(first.run_once())
    await wait_until(lambda: forge.calls["txt2img"] == 1)  # "first" holds the job
    seen: list[float] = []
    while not running.done():
        assert await thief.run_once() is None
        current = await get_job(runtime.db, job.id)
        assert current is not None
        if current.state == "running":
            seen.append(current.progress)
        await asyncio.sleep(0.1)
    final = await running
    assert final is not None and final.state == "succeeded" and final.attempts == 1
    assert final.lease_owner == "first" and thief.processed == 0
    assert any(0.0 < value < 1.0 for value in seen), seen


async def test_worker_survives_database_errors(make_config: Any, forge: ForgeStandIn,
                                               tmp_path: Path) -> None:
    """A worker started before the schema exists logs the errors and carries on once
    the database is usable."""
    url = f"sqlite:///{tmp_path / 'late.db'}"
    config = make_config(core={"database_url": url},
                         plugins={"forge-image": {"url": forge.url, **FORGE_QUICK}})
    runtime = Runtime(config, forge_candidates())
    runtime.register_providers()  # no ensure_started: the schema is not there yet
    worker = ImageWorker(runtime, poll_interval=0.05).start()
    try:
        await asyncio.sleep(0.3)
        assert worker._task is not None and not worker._task.done()
        await asyncio.to_thread(migrations.upgrade_all, url)
        job = await enqueue(runtime, "ann", request("late"))
        await wait_until(lambda: job.id in worker.completed, timeout=20)
    finally:
        await worker.stop()
        await runtime.stop()


async def test_sigterm_lets_the_worker_finish_its_job_and_exit(
    runtime: Runtime, forge: ForgeStandIn, tmp_path: Path, database_url: str
) -> None:
    forge.set_mode("slow")
    forge.delay = 1.0
    config = write_config(tmp_path / "w.toml", database_url, forge.url, runtime.config.data_dir)
    job = await enqueue(runtime, "ann", request("finish me"))
    process = worker_process(config, "polite")
    try:
        await wait_until(lambda: forge.calls["txt2img"] == 1)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "mami worker polite: completed 1 job(s)" in output
    final = await get_job(runtime.db, job.id)
    assert final is not None and final.state == "succeeded" and final.lease_owner == "polite"
