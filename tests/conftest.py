"""Shared fixtures: configs in temporary directories, SQLite and PostgreSQL databases,
a uvicorn server on loopback, and Chroma's embedding model in its cache."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Config, config_from_dict

PG_ADMIN_URL = os.environ.get("MAMI_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SHARED = next(
    (p for p in (Path(os.environ.get("MAMI_SHARED", "/work/shared")),
                 Path(__file__).resolve().parents[2] / "shared") if p.is_dir()),
    Path("/work/shared"),
)
SHARED_ONNX = SHARED / "models" / "chroma-onnx"
CHROMA_CACHE = Path.home() / ".cache" / "chroma" / "onnx_models"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Chroma cannot download its embedding model here: seed its cache when missing."""
    target = CHROMA_CACHE / "all-MiniLM-L6-v2" / "onnx"
    source = SHARED_ONNX / "all-MiniLM-L6-v2" / "onnx"
    if not (target / "model.onnx").exists() and source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            shutil.copy(item, target / item.name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def make_config(tmp_path: Path) -> Any:
    """``make_config(core={...}, plugins={...})``: a Config whose data lives in tmp_path.
    Auth is off unless a test turns it on; the database is SQLite unless given."""

    def build(**tables: Any) -> Config:
        raw: dict[str, Any] = {k: dict(v) for k, v in tables.items()}
        core = raw.setdefault("core", {})
        core.setdefault("data_dir", str(tmp_path / "data"))
        core.setdefault("auth", False)
        core.setdefault("image_worker", False)
        core.setdefault("database_url", f"sqlite:///{tmp_path / 'data' / 'mami.db'}")
        return config_from_dict(raw)

    return build


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                             connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is required in CI")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not running")
    import psycopg

    name = f"mami_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test",
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


class LiveServer:
    """A uvicorn server on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, port: int | None = None, log_level: str = "warning") -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level,
                           lifespan="on", ws_max_size=1 << 20)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server() -> Iterator[Any]:
    """``live_server(app)`` starts the app under uvicorn on loopback and returns it."""
    servers: list[LiveServer] = []

    def start(app: Any) -> LiveServer:
        server = LiveServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def pip_install_plugins(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package tests/<name>, really installed with pip into a private
    directory (so it never leaks into other tests or `mami serve`); returns that site."""
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    shutil.copytree(Path(__file__).parent / name, build / "src")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(build / "src")],
        check=True,
    )
    return target


@pytest.fixture(scope="session")
def sample_plugins_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample third-party plugins of tests/sample_plugin, installed with pip."""
    return pip_install_plugins("sample_plugin", tmp_path_factory)


@pytest.fixture(scope="session")
def contract_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin-contract plugins of tests/contract_plugins, installed with pip."""
    return pip_install_plugins("contract_plugins", tmp_path_factory)


@pytest.fixture(scope="session")
def notes_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The table-owning plugin of tests/notes_plugin, installed with pip."""
    return pip_install_plugins("notes_plugin", tmp_path_factory)


@pytest.fixture
def contract(contract_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the plugin-contract plugins on sys.path for one test."""
    monkeypatch.syspath_prepend(str(contract_site))
    return contract_site


@pytest.fixture
def notes(notes_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the notes plugin on sys.path for one test."""
    monkeypatch.syspath_prepend(str(notes_site))
    return notes_site


@pytest.fixture
def sample_plugins(sample_plugins_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the sample plugins on sys.path for one test: their entry points are found."""
    monkeypatch.syspath_prepend(str(sample_plugins_site))
    return sample_plugins_site
