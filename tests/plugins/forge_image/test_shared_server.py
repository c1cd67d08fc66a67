"""Several workers share one Forge server that runs one job at a time: a request that
times out (often while still queued) must stop only its own task, never somebody
else's, and no under-sampled image is ever a success."""

from __future__ import annotations

import asyncio
import io
from typing import Any

from PIL import Image

from core import migrations
from core.jobs import ImageWorker, enqueue, get_job, image_file
from core.plugins import builtin_candidates
from core.protocols import ImageRequest
from core.runtime import Runtime
from tests.forge_standin import STEPS_KEY, ForgeStandIn

STEPS = 4


def steps_of(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as image:
        return str(image.info.get(STEPS_KEY, ""))


async def test_three_generators_with_timeouts_while_queued(make_generator: Any) -> None:
    """Three processes (one generator each) send 4 jobs each to one slow server: jobs
    queued behind two others time out. Every success is complete, every interrupt hit
    a task its sender had given up, and abandoned tasks stop as soon as they start."""
    # A job takes 0.8 s: the first in the queue is done well within the 1.4 s read
    # timeout even on a loaded machine; one behind two others (2.4 s) surely is not.
    forge = ForgeStandIn(mode="slow", delay=0.8).start()
    generators = [make_generator(forge.url, read_timeout=1.4, deadline=1.6, attempts=1,
                                 progress_interval=0.05) for _ in range(3)]

    async def four(generator: Any, worker: int) -> list[Any]:
        return [await generator.generate(ImageRequest(prompt=f"w{worker} j{i}", width=64,
                                                      height=64, steps=STEPS, seed=i))
                for i in range(4)]

    try:
        batches = await asyncio.gather(*(four(g, n) for n, g in enumerate(generators)))
        for _ in range(500):  # orphans still queued start, and are stopped, one by one
            if not forge.pending and forge.current_task is None:
                break
            await asyncio.sleep(0.02)
        for generator in generators:
            await generator.aclose()
        results = [r for batch in batches for r in batch]
        succeeded = [r for r in results if not r.placeholder]
        timed_out = [r for r in results if r.reason == "timed_out"]
        assert succeeded and timed_out and len(succeeded) + len(timed_out) == 12
        assert all(steps_of(r.png) == f"{STEPS}/{STEPS}" for r in succeeded)
        ours = {r.info["task_id"] for r in succeeded}
        assert forge.interrupted_tasks, "abandoned tasks were interrupted"
        assert not ours & set(forge.interrupted_tasks)
        assert None not in forge.interrupted_tasks  # never sent while nothing of ours ran
        for generation in forge.generations:
            if generation.task_id in ours:
                assert not generation.interrupted and generation.steps_done == STEPS
        orphans = [g for g in forge.generations if g.task_id not in ours]
        assert sum(g.steps_done for g in orphans) < len(orphans) * STEPS  # cut short
    finally:
        forge.stop()


async def test_three_workers_through_the_queue_store_no_partial_image(
    make_config: Any, tmp_path: Any
) -> None:
    forge = ForgeStandIn(mode="slow", delay=0.8).start()  # timed as in the test above
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    migrations.upgrade_all(url)
    config = make_config(core={"database_url": url, "data_dir": str(tmp_path)},
                         plugins={"forge-image": {
        "url": forge.url, "deadline": 1.6, "connect_timeout": 0.3, "read_timeout": 1.4,
        "attempts": 1, "breaker_threshold": 1000, "progress_interval": 0.05}})
    runtime = Runtime(config, [c for c in builtin_candidates() if c.name == "forge-image"])
    await runtime.ensure_started()
    try:
        ids = [(await enqueue(runtime, "ann", ImageRequest(prompt=f"q{i}", width=64, height=64,
                                                            steps=STEPS))).id for i in range(12)]
        workers = [ImageWorker(runtime, lease_seconds=5) for _ in range(3)]
        await asyncio.gather(*(w.run(until_idle=True) for w in workers))
        states = []
        for job_id in ids:
            job = await get_job(runtime.db, job_id)
            assert job is not None
            states.append(job.state)
            if job.state == "succeeded":
                path = image_file(runtime.config, job)
                assert path is not None and steps_of(path.read_bytes()) == f"{STEPS}/{STEPS}"
            else:
                assert (job.state, job.placeholder_reason) == ("placeholder", "timed_out")
        assert "succeeded" in states and "placeholder" in states
        partial = [g for g in forge.generations if g.interrupted]
        assert {g.task_id for g in partial} <= set(filter(None, forge.interrupted_tasks))
    finally:
        await runtime.stop()
        forge.stop()


async def test_an_interrupted_result_is_never_a_success(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    """Someone else (the Forge UI, another client) interrupts our running job: the
    server still answers 200 with an under-sampled image, which must not count."""
    forge.set_mode("slow")
    forge.delay = 10.0  # surely still sampling when interrupted; the interrupt ends it
    generator = make_generator(forge.url, read_timeout=30.0, deadline=60.0)
    job = asyncio.create_task(generator.generate(ImageRequest(prompt="x", width=64, height=64,
                                                              steps=10)))
    while forge.current_task is None:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    forge.interrupt()
    result = await job
    assert result.placeholder and result.reason == "interrupted"
    assert forge.generations[0].interrupted and generator.breaker.consecutive_failures == 0
    await generator.aclose()
