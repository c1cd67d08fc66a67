"""``mami serve`` start-up, with a real server process: a plugin whose ``startup`` never
returns is failed after ``[core] startup_timeout`` and the app serves without it; SIGTERM
during start-up ends the process with a message; a port in use is refused in one line
before anything starts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "tests" / "contract_plugins" / "pyproject.toml"


def write_config(tmp_path: Path, core: str = "", only: str | None = "hangs") -> Path:
    """A plugins.toml that enables, of the contract plugins, only ``only`` (``None``:
    the contract plugins are not installed)."""
    others = re.findall(r"^([\w-]+) = \"mami_contract\.", CONTRACT.read_text(), flags=re.M)
    tables = "".join(f"[plugins.{name}]\nenabled = false\n" for name in others
                     if only is not None and name != only)
    config = tmp_path / "plugins.toml"
    config.write_text(f'[core]\ndata_dir = "{tmp_path / "data"}"\nauth = false\n{core}'
                      f"[plugins.local-llm]\nenabled = false\n{tables}", encoding="utf-8")
    return config


class Serve:
    """``mami serve`` in a subprocess, its output collected line by line."""

    def __init__(self, config: Path, port: int, site: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        path = f"{REPO}{os.pathsep}{site}" if site else str(REPO)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "--config", str(config), "serve",
             "--port", str(port)],
            cwd=config.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin", **(env or {})})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.output:
            assert time.monotonic() < deadline and self.process.poll() is None, self.output
            time.sleep(0.05)

    def end(self, seconds: float = 60) -> int:
        code = self.process.wait(timeout=seconds)
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


def test_a_startup_that_never_returns_is_failed_after_startup_timeout(
    tmp_path: Path, contract_site: Path
) -> None:
    port = free_port()
    server = Serve(write_config(tmp_path, "startup_timeout = 1.0\n"), port, contract_site)
    try:
        server.wait_for("Application startup complete")
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()
        assert health["status"] == "degraded"
        hangs = health["plugins"]["hangs"]
        assert hangs["status"] == "failed"
        assert hangs["error"] == ("startup failed: timed out after 1s ([core] startup_timeout; "
                                  "raise it if the plugin needs longer)")
        assert "plugin hangs failed: startup failed: timed out after 1s" in server.output
        server.process.send_signal(signal.SIGTERM)  # a normal stop (uvicorn re-raises it)
        assert server.end() == -signal.SIGTERM
        assert "Application shutdown complete" in server.output
    finally:
        server.kill()


def test_sigterm_during_start_up_ends_mami_serve(tmp_path: Path, contract_site: Path) -> None:
    port = free_port()
    server = Serve(write_config(tmp_path), port, contract_site)  # startup_timeout: 60 s
    try:
        server.wait_for("hangs: startup waits forever")
        server.process.send_signal(signal.SIGTERM)
        assert server.end() == 128 + signal.SIGTERM
        assert ("mami: SIGTERM during start-up (plugin hangs's startup was still running): "
                "stopping without serving") in server.output
        assert "Application startup complete" not in server.output
        assert "Traceback" not in server.output
    finally:
        server.kill()


def test_a_startup_that_ignores_cancellation_cannot_hold_sigint(
    tmp_path: Path, contract_site: Path
) -> None:
    port = free_port()
    server = Serve(write_config(tmp_path), port, contract_site,
                   env={"MAMI_CONTRACT_STUBBORN": "1"})
    try:
        server.wait_for("hangs: startup waits forever")
        server.process.send_signal(signal.SIGINT)
        assert server.end() == 128 + signal.SIGINT
        assert "mami: SIGINT during start-up (plugin hangs's startup was still running)" \
            in server.output
    finally:
        server.kill()


def test_a_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, only=None)
        result = subprocess.run(
            [sys.executable, "-m", "core.cli", "--config", str(config), "serve", "--port",
             str(port)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stdout == ""  # no "serving on", no start-up
    assert result.stderr == (
        f"mami: error: cannot listen on 127.0.0.1:{port}: the address is already in use "
        "(another mami serve or program is there): stop it, or choose another port with "
        "--port (or [server] port in plugins.toml)\n")
    assert not (tmp_path / "data").exists()  # no database was created or migrated
