"""``mami worker``: run image jobs from the database queue.

Several workers (on one or more machines) may share one PostgreSQL queue; each job is
claimed by exactly one of them at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

from core import hookimpl


def cmd_worker(args: argparse.Namespace) -> int:
    """Claim and run image jobs until stopped (SIGINT/SIGTERM finish the current job)."""
    return asyncio.run(_work(args))


async def _work(args: argparse.Namespace) -> int:
    from core.config import load_config
    from core.jobs import ImageWorker
    from core.runtime import Runtime

    runtime = Runtime(load_config(args.config))
    await runtime.ensure_started()
    try:
        runtime.require("images")
        worker = ImageWorker(runtime, worker_id=args.id, lease_seconds=args.lease,
                             poll_interval=args.poll)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, worker.request_stop)
        print(f"mami worker {worker.worker_id}: ready (lease {args.lease:g}s)", flush=True)
        await worker.run(max_jobs=args.max_jobs, until_idle=args.until_idle)
        print(f"mami worker {worker.worker_id}: completed {len(worker.completed)} job(s)",
              flush=True)
    finally:
        await runtime.stop()
    return 0


@hookimpl
def register_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser("worker", help="run image jobs from the queue",
                            description=cmd_worker.__doc__)
    parser.add_argument("--id", help="worker id shown in job leases (default: host:pid:random)")
    parser.add_argument("--lease", type=float, default=30.0,
                        help="seconds a claimed job stays ours without a renewal (default 30)")
    parser.add_argument("--poll", type=float, default=0.5,
                        help="seconds between queue polls when idle (default 0.5)")
    parser.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    parser.add_argument("--until-idle", action="store_true",
                        help="exit when the queue is empty")
    parser.set_defaults(func=cmd_worker)
