from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from plugins.forge_image import Settings
from plugins.forge_image.client import ForgeImageGenerator
from tests.forge_standin import ForgeStandIn


@pytest.fixture
def forge() -> Iterator[ForgeStandIn]:
    standin = ForgeStandIn().start()
    yield standin
    standin.stop()


def quick_settings(url: str, **overrides: Any) -> Settings:
    """Short back-offs and cool-downs so faults resolve in well under a second. The read
    timeout and deadline only have to let an answering stand-in in on a loaded machine;
    a test about timeouts sets its own."""
    values: dict[str, Any] = dict(
        url=url, connect_timeout=0.5, read_timeout=10.0, deadline=20.0, attempts=3,
        backoff_initial=0.01, backoff_max=0.05, backoff_jitter=0.01,
        breaker_threshold=100, breaker_cooldown=0.3, progress_interval=0.05,
        health_timeout=0.3,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_generator() -> Iterator[Any]:
    made: list[ForgeImageGenerator] = []

    def build(url: str, **overrides: Any) -> ForgeImageGenerator:
        generator = ForgeImageGenerator(quick_settings(url, **overrides))
        made.append(generator)
        return generator

    yield build


class ManualClock:
    """A clock for a circuit breaker (``generator.breaker.clock = clock``) that moves
    only when the test says: the cool-down passes when the test decides, not while a
    loaded machine is slow to make the next call."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now
