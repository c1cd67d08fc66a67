"""``mami serve`` as a real subprocess on a loopback port, for the browser tests."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
TOKEN_URL = re.compile(r"(http://\S+/\?token=(\S+))")


class MamiServer:
    """One ``mami serve`` process. Its data directory survives :meth:`stop`, so
    :meth:`start` again is a server restart with the same database and keys."""

    def __init__(self, workdir: Path, config: str, port: int,
                 env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.config_path = workdir / "plugins.toml"
        self.config_path.write_text(config, encoding="utf-8")
        self.env = {**os.environ, **(env or {})}
        # Import this checkout (and any extra plugin directories), not another install.
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), self.env.get("PYTHONPATH", "")) if p)
        self.env.pop("MAMI_DATABASE_URL", None)
        self.env.pop("MAMI_DATA_DIR", None)
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.token = ""

    @property
    def token_url(self) -> str:
        return f"{self.url}/?token={self.token}"

    def start(self, timeout: float = 120.0) -> MamiServer:
        """Start and wait until ``/health`` answers; remember the first-start token."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "--config", str(self.config_path), "serve",
             "--port", str(self.port)],
            cwd=self.workdir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mami serve exited:\n{self.output}")
            try:
                httpx.get(f"{self.url}/health", timeout=2)  # any answer: lifespan is done
                break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(f"mami serve did not start in {timeout} s:\n{self.output}")
        found = TOKEN_URL.search(self.output)
        if found and not self.token:
            self.token = found.group(2)
        return self

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def api(self) -> httpx.Client:
        """An HTTP client signed in with the first-start token."""
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"Authorization": f"Bearer {self.token}"})
