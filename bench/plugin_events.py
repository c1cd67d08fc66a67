"""Event delivery to plugins: the cost of isolation, against the old way in the same run.

``python bench/plugin_events.py`` fires ``message_completed`` at plugins registered in a
real :class:`core.plugins.PluginHost` and prints p50/p95 per event for:

- **old way**: every implementation called in turn, in the event loop, with all
  arguments (what mami did before the plugin contract of issue 14);
- **mami**: :meth:`PluginHost.fire`: through pluggy's execution, all subscribers at
  once, each with its own timeout, synchronous ones in a worker thread.

Two subscriber sets: four that do nothing (two sync, two async: the fixed cost), and
three async ones that each wait 20 ms on I/O (where running them at once pays off).
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import pct, save, say  # noqa: E402

from core import hookimpl  # noqa: E402
from core.config import config_from_dict  # noqa: E402
from core.events import MessageCompleted  # noqa: E402
from core.plugins import PluginHost  # noqa: E402

ROUNDS = 300


class SyncNoop:
    @hookimpl
    def message_completed(self, event: Any, runtime: Any) -> None:
        return None


class AsyncNoop:
    @hookimpl
    async def message_completed(self, event: Any, runtime: Any) -> None:
        return None


class AsyncIO:
    @hookimpl
    async def message_completed(self, event: Any, runtime: Any) -> None:
        await asyncio.sleep(0.02)


def host(plugins: list[Any]) -> PluginHost:
    made = PluginHost(config_from_dict({}), candidates=[])
    for i, plugin in enumerate(plugins):
        made.pm.register(plugin, name=f"p{i}")
    return made


async def old_way(made: PluginHost, event: MessageCompleted) -> None:
    for impl in reversed(made.pm.hook.message_completed.get_hookimpls()):
        if impl.plugin_name.startswith("core."):
            continue
        try:
            result = impl.function(event=event, runtime=None)
            if inspect.isawaitable(result):
                await asyncio.wait_for(result, 30.0)
        except Exception:
            pass


async def measure(name: str, plugins: list[Any], rounds: int) -> None:
    made = host(plugins)
    event = MessageCompleted("o", "c", "m", "u", "hi", "hello")
    timings: dict[str, list[float]] = {"old way": [], "mami": []}
    for _ in range(rounds):  # interleaved, so load from other processes hits both alike
        started = time.perf_counter()
        await old_way(made, event)
        timings["old way"].append(time.perf_counter() - started)
        started = time.perf_counter()
        await made.fire("message_completed", 30.0, event=event, runtime=None)
        timings["mami"].append(time.perf_counter() - started)
    for method, values in timings.items():
        say(f"{name:<28} {method:<8} p50 {pct(values, 0.5) * 1e3:8.3f} ms   "
            f"p95 {pct(values, 0.95) * 1e3:8.3f} ms")


async def main() -> None:
    say(f"message_completed delivery, {ROUNDS} events per row")
    await measure("4 no-op (2 sync, 2 async)",
                  [SyncNoop(), SyncNoop(), AsyncNoop(), AsyncNoop()], ROUNDS)
    await measure("3 async, 20 ms I/O each", [AsyncIO(), AsyncIO(), AsyncIO()], ROUNDS // 6)
    print(f"saved {save('plugin_events')}")


if __name__ == "__main__":
    asyncio.run(main())
