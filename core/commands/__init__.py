"""Core sub-commands beyond serve/db/plugins. Each module registers its parser with
:func:`core.cli.core_command`; keep heavy imports inside the command functions."""

from core.commands import chat, doctor, ingest, worker

__all__ = ["chat", "doctor", "ingest", "worker"]
