"""``mami serve --host 0.0.0.0`` prints addresses a browser can open, not 0.0.0.0, and
serves them (their Host header is accepted)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.cli import reachable_addresses
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def test_reachable_addresses_end_with_loopback_and_hold_no_wildcard() -> None:
    found = reachable_addresses()
    assert found[-1] == "127.0.0.1"
    assert "0.0.0.0" not in found and "::" not in found
    assert len(found) == len(set(found))


def test_serve_on_all_interfaces_prints_and_serves_reachable_addresses(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "plugins.toml").write_text(
        f'[core]\ndata_dir = "{tmp_path / "data"}"\nauth = false\n'
        '[plugins.local-llm]\nenabled = false\n', encoding="utf-8")
    process = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "--config", str(tmp_path / "plugins.toml"), "serve",
         "--host", "0.0.0.0", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    try:
        assert process.stdout is not None
        line = ""
        deadline = time.monotonic() + 60
        while "serving on" not in line and time.monotonic() < deadline:
            line = process.stdout.readline()
        assert "http://0.0.0.0" not in line
        assert f"http://127.0.0.1:{port}" in line and "listening on 0.0.0.0" in line, line
        for address in reachable_addresses():
            host = f"[{address}]" if ":" in address else address
            assert f"http://{host}:{port}" in line
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        first = reachable_addresses()[0]
        if first != "127.0.0.1":  # served under the printed name, not refused as a foreign Host
            response = httpx.get(f"http://{first}:{port}/health", timeout=5)
            assert response.status_code != 421, response.text
    finally:
        process.terminate()
        process.wait(timeout=30)
