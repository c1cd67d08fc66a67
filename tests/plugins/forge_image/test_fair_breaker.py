"""The breaker counts only faults that say the server is unhealthy: one user's bad or
too-large requests never open it for everybody, while a stalled server opens it after
``breaker_threshold`` timed-out attempts."""

from __future__ import annotations

import time
from typing import Any

from core.protocols import ImageRequest
from tests.forge_standin import ForgeStandIn

SMALL = ImageRequest(prompt="fine", width=64, height=64, steps=2)


async def test_a_burst_of_per_request_faults_never_opens_the_breaker(
    make_generator: Any
) -> None:
    forge = ForgeStandIn(oom_pixels=512 * 512).start()
    generator = make_generator(forge.url, breaker_threshold=2)
    try:
        huge = ImageRequest(prompt="huge", width=2048, height=2048, steps=150)
        unknown = ImageRequest(prompt="x", checkpoint="no-such-model", width=64, height=64)
        bad_sampler = ImageRequest(prompt="x", sampler="Nope 3000", width=64, height=64)
        for _ in range(5):
            assert (await generator.generate(huge)).reason == "out_of_memory"
            assert (await generator.generate(unknown)).reason == "unknown_checkpoint"
            assert (await generator.generate(bad_sampler)).reason == "unknown_sampler"
        assert generator.breaker.state == "closed"
        assert generator.breaker.consecutive_failures == 0
        assert forge.calls["txt2img"] == 5  # only the OOMs reached the GPU
        assert forge.calls["sd-models"] == 1 and forge.calls["samplers"] == 1  # cached lists
        other_owner = await generator.generate(SMALL)
        assert not other_owner.placeholder
    finally:
        await generator.aclose()
        forge.stop()


async def test_unknown_names_say_what_the_server_has(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    generator = make_generator(forge.url)
    result = await generator.generate(ImageRequest(prompt="x", checkpoint="nope", width=64,
                                                   height=64))
    assert result.placeholder and result.reason == "unknown_checkpoint"
    assert "'nope' is not on the server" in result.info["detail"]
    assert "dream-v2.safetensors" in result.info["detail"]
    for request in (ImageRequest(prompt="x", checkpoint="dream-v2", sampler="DPM++ 2M Karras",
                                 scheduler="karras", width=64, height=64),
                    ImageRequest(prompt="x", checkpoint="abc123", sampler="k_euler",
                                 scheduler="Simple", width=64, height=64)):
        assert not (await generator.generate(request)).placeholder
    result = await generator.generate(ImageRequest(prompt="x", scheduler="Nope", width=64,
                                                   height=64))
    assert result.reason == "unknown_scheduler" and forge.calls["txt2img"] == 2
    await generator.aclose()


async def test_seed_is_clamped_to_the_api_range(forge: ForgeStandIn, make_generator: Any) -> None:
    generator = make_generator(forge.url)
    result = await generator.generate(ImageRequest(prompt="x", seed=2**80, width=64, height=64))
    assert not result.placeholder and forge.last_payload["seed"] == 2**32 - 1
    await generator.generate(ImageRequest(prompt="x", seed=-5, width=64, height=64))
    assert forge.last_payload["seed"] == -1
    await generator.aclose()


async def test_a_stalled_server_opens_after_threshold_timed_out_attempts(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    forge.set_mode("stall")
    generator = make_generator(forge.url, read_timeout=0.3, deadline=10.0, attempts=5,
                               breaker_threshold=3, breaker_cooldown=60.0)
    started = time.monotonic()
    first = await generator.generate(SMALL)
    # three timed-out attempts open it; the job says what happened to it
    assert generator.breaker.state == "open" and forge.calls["txt2img"] == 3
    assert first.reason == "timed_out" and "circuit" in first.info["detail"]
    assert time.monotonic() - started < 10.0
    assert (await generator.generate(SMALL)).reason == "circuit_open"
    assert forge.calls["txt2img"] == 3
    await generator.aclose()


async def test_deadline_cut_attempts_count(forge: ForgeStandIn, make_generator: Any) -> None:
    forge.set_mode("stall")
    generator = make_generator(forge.url, read_timeout=30.0, deadline=0.4, attempts=3,
                               breaker_threshold=2, breaker_cooldown=60.0)
    assert (await generator.generate(SMALL)).reason == "timed_out"
    assert generator.breaker.state == "closed" and generator.breaker.consecutive_failures == 1
    assert (await generator.generate(SMALL)).reason == "timed_out"
    assert generator.breaker.state == "open"
    assert (await generator.generate(SMALL)).reason == "circuit_open"
    await generator.aclose()


async def test_the_job_that_opens_the_breaker_reports_its_own_fault(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    forge.set_mode("503")
    generator = make_generator(forge.url, attempts=3, breaker_threshold=2)
    result = await generator.generate(SMALL)
    assert forge.calls["txt2img"] == 2 and generator.breaker.state == "open"
    assert result.reason == "unavailable" and "HTTP 503" in result.info["detail"]
    await generator.aclose()
