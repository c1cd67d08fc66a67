"""One owner of the embedded store: ``mami ingest`` on the data directory of a running
``mami serve`` refuses, naming the server, and writes nothing (it used to write vectors
and rows the server never saw until it restarted). Two real processes."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]


def config(data: Path) -> str:
    return f"""
[core]
data_dir = "{data}"
auth = false
image_worker = false

[plugins.local-llm]
enabled = false

[plugins.forge-image]
enabled = false

[plugins.memory]
enabled = false
"""


def mami(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MAMI_DATABASE_URL", None)
    env.pop("MAMI_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "core.cli", "--config",
                           str(workdir / "plugins.toml"), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)


def documents(data: Path) -> int:
    with sqlite3.connect(data / "mami.db") as db:
        return int(db.execute("select count(*) from documents").fetchone()[0])


def test_ingest_refuses_a_store_a_running_server_holds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "plugins.toml").write_text(config(data), encoding="utf-8")
    (tmp_path / "notes.md").write_text("The boat leaves at noon.", encoding="utf-8")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MAMI_DATABASE_URL", None)
    env.pop("MAMI_DATA_DIR", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "--config", str(tmp_path / "plugins.toml"), "serve",
         "--port", str(port)], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=2)
                break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        refused = mami(tmp_path, "ingest", "notes.md", "--owner", "alice")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"mami serve at {url}" in refused.stderr
        assert f"{url}/api/documents" in refused.stderr and "Traceback" not in refused.stderr
        assert documents(data) == 0
        assert httpx.get(url + "/api/documents").json() == []
        uploaded = httpx.post(url + "/api/documents", timeout=60,
                              json={"source": "notes.md", "text": "The boat leaves at noon."})
        assert uploaded.status_code == 201, uploaded.text
    finally:
        server.terminate()
        server.wait(timeout=30)
    done = mami(tmp_path, "ingest", "notes.md", "--owner", "alice")  # the server is gone
    assert done.returncode == 0, done.stderr
    assert documents(data) == 2
