"""forge-image: text-to-image through a Stable Diffusion WebUI Forge or AUTOMATIC1111
server (its ``/sdapi/v1`` HTTP API), with timeouts, retries on transient faults only,
a circuit breaker and placeholder images that say what went wrong.

Pillow is imported only when an image is checked or a placeholder drawn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from core import hookimpl
from core.errors import ConfigError
from core.protocols import ImageGenerator

if TYPE_CHECKING:
    from core.runtime import Runtime

PLUGIN_NAME = "forge-image"


@dataclass
class Settings:
    """``[plugins.forge-image]``."""

    url: str = ""
    """Base URL of the Forge / AUTOMATIC1111 server (started with ``--api``); empty:
    image generation is off (no generator registered: ``/image`` answers that no image
    server is configured, ``POST /api/images`` is a 503)."""
    username: str = ""
    """HTTP Basic user for a server started with ``--api-auth``; empty: no auth."""
    password: str = ""
    """HTTP Basic password; put ``{ env = "FORGE_PASSWORD" }`` here, never the secret."""
    checkpoint: str = ""
    """Default model checkpoint for requests that name none (sent per request via
    ``override_settings``, restored afterwards); empty: the server's current one."""
    sampler: str = ""
    """Default sampler for requests that name none; empty: the server's API default."""
    scheduler: str = ""
    """Default scheduler (A1111 >= 1.9, Forge); empty: the server's default (automatic)."""
    cfg_scale: float | None = None
    """Default CFG scale; unset: the server's API default (7). Use 1 for Flux on Forge."""
    distilled_cfg_scale: float | None = None
    """Default distilled CFG scale (Forge, Flux); unset: the server's default (3.5)."""
    connect_timeout: float = 3.0
    """Seconds to establish a connection, per attempt."""
    read_timeout: float = 120.0
    """Seconds to wait for the server's answer, per attempt."""
    deadline: float = 180.0
    """Total seconds a job may take across all attempts and back-offs."""
    attempts: int = 3
    """Maximum attempts per job (retries only on transient faults)."""
    backoff_initial: float = 0.5
    """First back-off in seconds; it doubles per retry."""
    backoff_max: float = 8.0
    """Longest back-off in seconds."""
    backoff_jitter: float = 0.5
    """Random jitter added to each back-off, in seconds."""
    breaker_threshold: int = 5
    """Consecutive failed calls that open the circuit."""
    breaker_cooldown: float = 30.0
    """Seconds the circuit stays open before one probe may go through."""
    progress_interval: float = 1.0
    """Seconds between ``/sdapi/v1/progress`` polls while a job runs."""
    health_timeout: float = 1.0
    """Seconds the ``/health`` probe and the model, sampler and scheduler list requests
    (``/sdapi/v1/sd-models`` and friends) may take."""
    health_interval: float = 15.0
    """Seconds a ``/health`` probe result is reused: health checks never cost one
    request to the GPU host each."""
    orphan_watch: float = 600.0
    """Seconds to keep watching a request that timed out (perhaps still queued on the
    server) so that it is interrupted as soon as it starts instead of running for
    nobody."""

    def __post_init__(self) -> None:
        positive = ("connect_timeout", "read_timeout", "deadline", "attempts",
                    "breaker_threshold", "progress_interval", "health_timeout",
                    "health_interval", "orphan_watch")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"[plugins.{PLUGIN_NAME}] {name}: must be greater than 0")
        for name in ("backoff_initial", "backoff_max", "backoff_jitter", "breaker_cooldown"):
            if getattr(self, name) < 0:
                raise ConfigError(f"[plugins.{PLUGIN_NAME}] {name}: must not be negative")
        for name, low, high in (("cfg_scale", 1.0, 30.0), ("distilled_cfg_scale", 0.0, 30.0)):
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ConfigError(
                    f"[plugins.{PLUGIN_NAME}] {name}: must be from {low:g} to {high:g}")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"[plugins.{PLUGIN_NAME}] url: must start with http:// or https://")


@hookimpl
def register_image_generators(
    register: Callable[[ImageGenerator], None], runtime: Runtime
) -> None:
    """Register the Forge generator (nothing heavy is imported here), once a server URL
    is configured."""
    settings = runtime.settings(PLUGIN_NAME) or Settings()
    if not settings.url:
        runtime.provider_off(PLUGIN_NAME, "images", f"image generation is off until "
                             f"[plugins.{PLUGIN_NAME}] url is set in {runtime.config.source} "
                             "(the address of a Forge or AUTOMATIC1111 server started with --api)")
        return
    from plugins.forge_image.client import ForgeImageGenerator

    register(ForgeImageGenerator(settings, PLUGIN_NAME))
