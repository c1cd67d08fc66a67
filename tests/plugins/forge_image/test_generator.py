"""The Forge generator against the stand-in Forge on loopback: real HTTP, real PNGs."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from typing import Any

import pytest
from PIL import Image

from core.protocols import ImageGenerator, ImageRequest
from plugins.forge_image.client import redact_url
from plugins.forge_image.placeholder import PLACEHOLDER_KEY
from tests.conftest import free_port
from tests.forge_standin import CHECKPOINTS, STEPS_KEY, ForgeStandIn
from tests.plugins.forge_image.conftest import ManualClock

REQUEST = ImageRequest(prompt="a red fox", width=64, height=64, steps=4, seed=7)

# mode -> (placeholder reason or None for a real image, attempts the stand-in sees)
FAULTS: dict[str, tuple[str | None, int]] = {
    "ok": (None, 1),
    "slow": (None, 1),
    "flapping": (None, 2),
    "503": ("unavailable", 3),
    "502": ("unavailable", 3),
    "stall": ("timed_out", 3),
    "oom": ("out_of_memory", 1),
    "reject": ("rejected", 1),
    "malformed": ("invalid_response", 1),
    "bad_base64": ("invalid_response", 1),
    "not_image": ("invalid_response", 1),
    "empty": ("invalid_response", 1),
}


def png_meta(data: bytes) -> tuple[str, tuple[int, int], dict[str, Any]]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.format or "", image.size, {str(k): v for k, v in image.info.items()}


async def test_real_image_and_payload(forge: ForgeStandIn, make_generator: Any) -> None:
    generator = make_generator(forge.url, checkpoint="dream-v2", sampler="DPM++ 2M")
    assert isinstance(generator, ImageGenerator) and hasattr(generator, "aclose")
    result = await generator.generate(REQUEST)
    assert not result.placeholder and result.reason is None
    kind, size, meta = png_meta(result.png)
    assert (kind, size) == ("PNG", (64, 64)) and PLACEHOLDER_KEY not in meta
    assert meta[STEPS_KEY] == "4/4"
    assert result.info["seed"] == 7
    sent = forge.last_payload
    assert sent["prompt"] == "a red fox" and sent["steps"] == 4 and sent["seed"] == 7
    assert sent["sampler_name"] == "DPM++ 2M"
    assert sent["override_settings"] == {"sd_model_checkpoint": "dream-v2"}
    assert sent["override_settings_restore_afterwards"] is True
    assert sent["force_task_id"] == result.info["task_id"]
    assert forge.options["sd_model_checkpoint"] == CHECKPOINTS[0]  # restored afterwards
    await generator.aclose()


@pytest.mark.parametrize("mode", list(FAULTS))
async def test_fault_matrix(forge: ForgeStandIn, make_generator: Any, mode: str) -> None:
    """Each fault ends within the deadline; only transient faults are retried."""
    forge.delay = 0.3
    forge.set_mode(mode)
    # a stall ends after three read timeouts, well before the deadline
    timeouts = {"read_timeout": 0.6} if mode == "stall" else {}
    generator = make_generator(forge.url, deadline=5.0, **timeouts)
    started = time.monotonic()
    result = await generator.generate(REQUEST)
    elapsed = time.monotonic() - started
    reason, attempts = FAULTS[mode]
    assert elapsed <= 5.0
    assert result.reason == reason and result.placeholder is (reason is not None)
    assert forge.calls["txt2img"] == attempts == generator.attempts_total
    kind, _size, meta = png_meta(result.png)
    assert kind == "PNG"
    assert meta.get(PLACEHOLDER_KEY) == reason if reason else PLACEHOLDER_KEY not in meta
    if mode == "stall":
        assert forge.calls["interrupt"] >= 1
    await generator.aclose()


async def test_refused_connection_is_retried_then_placeholder(make_generator: Any) -> None:
    generator = make_generator(f"http://127.0.0.1:{free_port()}")
    result = await generator.generate(REQUEST)
    assert result.placeholder and result.reason == "unavailable"
    assert generator.attempts_total == 3
    assert "ConnectError" in result.info["detail"]
    await generator.aclose()


async def test_deadline_bounds_a_stalled_job_and_interrupts(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    forge.set_mode("stall")
    generator = make_generator(forge.url, read_timeout=30.0, deadline=2.0)
    started = time.monotonic()
    result = await generator.generate(REQUEST)
    assert time.monotonic() - started <= 2.0  # the deadline, not the 30 s read timeout
    assert result.reason == "timed_out" and generator.attempts_total == 1
    assert generator.breaker.consecutive_failures == 1  # the cut attempt counts
    await generator.aclose()  # waits for the interrupt it sent
    assert forge.calls["interrupt"] == 1
    assert forge.interrupted_tasks == [forge.payloads[0]["force_task_id"]]  # ours, running


async def test_progress_is_polled(forge: ForgeStandIn, make_generator: Any) -> None:
    forge.set_mode("slow")
    forge.delay = 0.5
    generator = make_generator(forge.url)
    seen: list[float] = []
    result = await generator.generate(REQUEST, progress=seen.append)
    assert not result.placeholder
    assert forge.calls["progress"] >= 2
    assert any(0.0 < value < 1.0 for value in seen) and seen[-1] == 1.0
    assert seen == sorted(seen)
    await generator.aclose()


async def test_breaker_opens_fails_fast_and_closes_after_recovery(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    forge.set_mode("503")
    generator = make_generator(forge.url, attempts=1, breaker_threshold=3, breaker_cooldown=0.3)
    generator.breaker.clock = clock = ManualClock()
    for _ in range(3):
        assert (await generator.generate(REQUEST)).reason == "unavailable"
    assert generator.breaker.state == "open"
    fast = await generator.generate(REQUEST)
    assert fast.reason == "circuit_open" and forge.calls["txt2img"] == 3  # Forge not called
    health = await generator.health()
    assert health["status"] == "open" and health["breaker"]["opened"] == 1

    forge.set_mode("ok")
    clock.now += 0.35  # cool-down passes: the next call is the half-open probe
    recovered = await generator.generate(REQUEST)
    assert not recovered.placeholder
    snapshot = generator.breaker.snapshot()
    assert snapshot["state"] == "closed" and snapshot["closed"] == 1 and snapshot["rejected"] >= 1
    await generator.aclose()


async def test_failed_probe_reopens(forge: ForgeStandIn, make_generator: Any) -> None:
    forge.set_mode("502")
    generator = make_generator(forge.url, attempts=1, breaker_threshold=2,
                               breaker_cooldown=0.2)
    generator.breaker.clock = clock = ManualClock()
    await generator.generate(REQUEST)
    await generator.generate(REQUEST)
    assert generator.breaker.state == "open"
    clock.now += 0.25
    probe = await generator.generate(REQUEST)
    assert probe.reason == "unavailable" and forge.calls["txt2img"] == 3
    assert generator.breaker.state == "open" and generator.breaker.counts["opened"] == 2
    await generator.aclose()


async def test_half_open_lets_exactly_one_probe_through(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    import asyncio

    forge.set_mode("503")
    generator = make_generator(forge.url, attempts=1, breaker_threshold=1, breaker_cooldown=0.1)
    generator.breaker.clock = clock = ManualClock()
    await generator.generate(REQUEST)
    forge.set_mode("slow")
    forge.delay = 0.3
    clock.now += 0.15
    results = await asyncio.gather(*(generator.generate(REQUEST) for _ in range(5)))
    assert forge.calls["txt2img"] == 2  # the first 503 and a single probe
    assert sorted(str(r.reason) for r in results) == ["None"] + ["circuit_open"] * 4
    assert generator.breaker.state == "closed"
    await generator.aclose()


async def test_basic_auth_with_password_from_env(
    make_generator: Any, monkeypatch: pytest.MonkeyPatch, make_config: Any
) -> None:
    from core.runtime import Runtime

    standin = ForgeStandIn(auth=("mami", "s3cret")).start()
    try:
        monkeypatch.setenv("FORGE_TEST_PASSWORD", "s3cret")
        config = make_config(plugins={"forge-image": {
            "url": standin.url, "username": "mami", "password": {"env": "FORGE_TEST_PASSWORD"}}})
        assert config.redacted()["plugins"]["forge-image"]["password"] == "***"
        runtime = Runtime(config)
        runtime.register_providers()
        generator = runtime.require("images")
        assert generator.name == "forge-image"
        assert not (await generator.generate(REQUEST)).placeholder

        wrong = make_generator(standin.url, username="mami", password="nope")
        result = await wrong.generate(REQUEST)
        assert result.reason == "rejected" and wrong.attempts_total == 1
        assert standin.auth_failures == 1
        await generator.aclose()
        await wrong.aclose()
    finally:
        standin.stop()


async def test_health_probe_is_cheap_bounded_and_cached(
    forge: ForgeStandIn, make_generator: Any
) -> None:
    generator = make_generator(forge.url, health_interval=60.0)
    reports = [await generator.health() for _ in range(5)]
    assert all(r["status"] == "ok" and r["models"] == len(CHECKPOINTS) for r in reports)
    assert reports[0]["breaker"]["state"] == "closed"
    assert forge.calls["sd-models"] == 1 and forge.calls["txt2img"] == 0  # one probe

    forge.set_mode("stall")  # sd-models hangs too
    stalled = make_generator(forge.url, health_interval=60.0)
    started = time.monotonic()
    health = await stalled.health()
    assert health["status"] == "unreachable"
    assert time.monotonic() - started < 2.0  # /health gives each probe at most 2 s
    assert stalled.breaker.state == "closed"  # probes never move the breaker
    await generator.aclose()
    await stalled.aclose()


async def test_health_shows_no_credentials(make_generator: Any) -> None:
    standin = ForgeStandIn(auth=("mami", "s3cret")).start()
    try:
        generator = make_generator(f"http://mami:s3cret@127.0.0.1:{standin.port}/")
        assert not (await generator.generate(REQUEST)).placeholder  # userinfo is the auth
        standin.set_mode("503")
        await generator.generate(REQUEST)
        health = await generator.health()
        assert health["url"] == f"http://127.0.0.1:{standin.port}"
        assert health["status"] == "ok" and "unavailable" in health["last_error"]
        assert "s3cret" not in repr(health) + generator.breaker.name
        await generator.aclose()
    finally:
        standin.stop()
    assert redact_url("https://u:p@[::1]:7860/forge?key=x#f") == "https://[::1]:7860/forge"


@pytest.mark.parametrize(("table", "message"), [
    ({"deadline": "soon"}, r"\[plugins.forge-image\] deadline: expected a number"),
    ({"deadline": 0}, r"\[plugins.forge-image\] deadline: must be greater than 0"),
    ({"attempts": 0}, r"\[plugins.forge-image\] attempts: must be greater than 0"),
    ({"backoff_max": -1}, r"\[plugins.forge-image\] backoff_max: must not be negative"),
    ({"url": "forge:7860"}, r"\[plugins.forge-image\] url: must start with http"),
    ({"timeout": 3}, r"\[plugins.forge-image\] timeout: unknown setting"),
])
def test_bad_setting_names_the_key(make_config: Any, table: dict[str, Any], message: str) -> None:
    from core.errors import ConfigError
    from core.runtime import Runtime

    with pytest.raises(ConfigError, match=message):
        Runtime(make_config(plugins={"forge-image": table}))


def test_registration_does_not_import_pillow() -> None:
    code = ("import sys; from core.config import config_from_dict; from core.runtime import "
            "Runtime; from core.plugins import builtin_candidates as b; "
            "cfg = config_from_dict({'plugins': {'forge-image': {'url': 'http://127.0.0.1:9'}}}); "
            "r = Runtime(cfg, [c for c in b() if c.name == 'forge-image']); "
            "r.register_providers(); "
            "assert r.images is not None; print(sorted(m for m in ('PIL', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=".")
    assert out.stdout.strip() == "[]"
