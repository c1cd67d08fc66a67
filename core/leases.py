"""Leases on rows that one process is working on, and whether that process still lives.

A lease holder is ``host:pid:start/nonce``: ``start`` is the process's start time (from
``/proc``), so a reused pid is not mistaken for the dead holder. On the holder's own
host, :func:`holder_gone` answers at once (a process killed with ``kill -9`` is seen
as gone by the next process that looks); on another host only the lease's expiry tells,
so a live process elsewhere is never taken for dead.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

from core.models import utcnow

__all__ = ["PROCESS", "expired", "holder_gone", "new_holder"]


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot; ``None`` when there
    is no such process. ``""`` where ``/proc`` is missing (liveness by signal only)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            # The command name (field 2) may hold spaces: fields are counted after ")".
            return stat.read().rsplit(")", 1)[1].split()[19]
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ""


PROCESS = f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid()) or ''}"
"""This process, as lease holders name it."""


def new_holder() -> str:
    """A lease holder for one piece of work of this process."""
    return f"{PROCESS}/{uuid.uuid4().hex[:12]}"


def holder_gone(holder: str | None) -> bool:
    """True when ``holder`` is a process on this host that no longer runs (or a process
    started since under its pid); False when it lives or runs on another host."""
    if not holder:
        return False
    process = holder.split("/", 1)[0]
    host, _, rest = process.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    if process == PROCESS:
        return False
    ticks = _start_ticks(int(pid_text))
    return ticks is None or bool(ticks and start and ticks != start)


def expired(lease_until: datetime | None, now: datetime | None = None,
            fallback: datetime | None = None, grace: timedelta = timedelta(0)) -> bool:
    """True when ``lease_until`` has passed; a row without one (written before leases)
    counts from ``fallback`` plus ``grace``."""
    now = now or utcnow()
    if lease_until is None:
        return fallback is not None and _aware(fallback) + grace < now
    return _aware(lease_until) < now


def _aware(moment: Any) -> Any:
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
