"""What mami creates on disk is private to its user: directories 0700, files 0600."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from core.app import create_app
from core.image_store import _write_atomically


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_data_dir_and_database_are_private(tmp_path: Path, make_config: Any) -> None:
    data = tmp_path / "fresh" / "data"
    config = make_config(core={"data_dir": str(data),
                               "database_url": f"sqlite:///{data / 'mami.db'}"})
    async with AsyncTestClient(create_app(config), base_url="http://127.0.0.1") as client:
        assert (await client.post("/api/conversations", json={})).status_code == 201
    assert mode(data) == 0o700
    assert mode(data.parent) == 0o700
    created = [p for p in data.iterdir() if p.name.startswith("mami.db")]
    assert created and all(mode(p) == 0o600 for p in created), [(p, oct(mode(p))) for p in created]
    assert mode(data / "auth") == 0o700


def test_images_are_private(tmp_path: Path) -> None:
    target = tmp_path / "images" / "alice" / "x.png"
    _write_atomically(target, b"png")
    assert mode(target) == 0o600 and mode(target.parent) == 0o700
