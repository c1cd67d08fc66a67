"""HTTP and WebSocket routes of the core. Each module exposes ``routes``."""

ROUTE_MODULES = (
    "core.api.health",
    "core.api.conversations",
    "core.api.openai",
    "core.api.ws",
    "core.api.documents",
    "core.api.memories",
    "core.api.images",
    "core.api.me",
)
