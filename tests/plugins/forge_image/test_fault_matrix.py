"""Jobs through the queue against every fault mode of the stand-in Forge: each job ends
final within its deadline, only transient faults are retried, the breaker opens and
closes again after recovery, and no job is lost."""

from __future__ import annotations

from typing import Any

from core import migrations
from core.jobs import FINAL_STATES, ImageWorker, enqueue, get_job
from core.plugins import builtin_candidates
from core.protocols import ImageRequest
from core.runtime import Runtime
from tests.forge_standin import ForgeStandIn
from tests.plugins.forge_image.conftest import ManualClock

DEADLINE = 5.0  # no mode waits for it: a stall ends after three read timeouts
# mode -> (final state, placeholder reason, Forge calls per job)
MATRIX: dict[str, tuple[str, str | None, int]] = {
    "ok": ("succeeded", None, 1),
    "slow": ("succeeded", None, 1),
    "flapping": ("succeeded", None, 2),
    "refuse": ("placeholder", "unavailable", 0),
    "503": ("placeholder", "unavailable", 3),
    "502": ("placeholder", "unavailable", 3),
    "stall": ("placeholder", "timed_out", 3),
    "oom": ("placeholder", "out_of_memory", 1),
    "reject": ("placeholder", "rejected", 1),
    "malformed": ("placeholder", "invalid_response", 1),
    "bad_base64": ("placeholder", "invalid_response", 1),
    "not_image": ("placeholder", "invalid_response", 1),
    "empty": ("placeholder", "invalid_response", 1),
}


async def test_fault_matrix_through_the_queue(make_config: Any, tmp_path: Any) -> None:
    forge = ForgeStandIn(delay=0.2).start()
    url = f"sqlite:///{tmp_path / 'matrix.db'}"
    migrations.upgrade_all(url)
    config = make_config(core={"database_url": url}, plugins={"forge-image": {
        "url": forge.url, "deadline": DEADLINE, "connect_timeout": 0.3, "read_timeout": 1.0,
        "attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.03, "backoff_jitter": 0.01,
        "breaker_threshold": 1000, "breaker_cooldown": 0.4, "progress_interval": 0.05}})
    runtime = Runtime(config, [c for c in builtin_candidates() if c.name == "forge-image"])
    await runtime.ensure_started()
    generator: Any = runtime.require("images")
    worker = ImageWorker(runtime, lease_seconds=5)
    all_ids: list[str] = []
    try:
        for mode, (state, reason, calls) in MATRIX.items():
            forge.set_mode(mode)
            before = forge.calls["txt2img"]
            ids = [(await enqueue(runtime, "ann", ImageRequest(prompt=f"{mode} {i}", width=64,
                                                                height=64))).id
                   for i in range(2)]
            all_ids += ids
            await worker.run(until_idle=True)
            assert forge.calls["txt2img"] - before == 2 * calls, mode
            for job_id in ids:
                job = await get_job(runtime.db, job_id)
                assert job is not None and (job.state, job.placeholder_reason) == (state, reason)
                assert job.started_at and job.finished_at
                assert (job.finished_at - job.started_at).total_seconds() <= DEADLINE, mode

        # The breaker: after a success, three failed calls open it; while it is open,
        # jobs fail fast without calling Forge.
        generator.breaker.threshold = 3
        generator.breaker.clock = clock = ManualClock()  # open until the test moves it
        forge.set_mode("ok")
        all_ids.append((await enqueue(runtime, "ann", ImageRequest(prompt="fine"))).id)
        await worker.run(until_idle=True)
        assert generator.breaker.consecutive_failures == 0
        forge.set_mode("503")
        before = forge.calls["txt2img"]
        ids = [(await enqueue(runtime, "ann", ImageRequest(prompt=f"down {i}"))).id
               for i in range(4)]
        all_ids += ids
        await worker.run(until_idle=True)
        assert forge.calls["txt2img"] - before == 3 and generator.breaker.state == "open"
        reasons = [(await get_job(runtime.db, i)).placeholder_reason for i in ids]  # type: ignore[union-attr]
        assert reasons == ["unavailable", "circuit_open", "circuit_open", "circuit_open"]
        health = await generator.health()
        assert health["status"] == "open" and health["breaker"]["rejected"] >= 3

        forge.set_mode("ok")
        clock.now += 0.45  # the cool-down passes; the next job is the probe
        back = await enqueue(runtime, "ann", ImageRequest(prompt="back again"))
        all_ids.append(back.id)
        await worker.run(until_idle=True)
        assert (await get_job(runtime.db, back.id)).state == "succeeded"  # type: ignore[union-attr]
        assert generator.breaker.state == "closed"
        assert generator.breaker.counts["opened"] == generator.breaker.counts["closed"] == 1

        finals = [await get_job(runtime.db, i) for i in all_ids]
        assert all(j is not None and j.state in FINAL_STATES for j in finals)
        assert sorted(worker.completed) == sorted(all_ids)
    finally:
        await runtime.stop()
        forge.stop()
