"""`mami doctor` against a healthy setup and broken ones: the right lines, the right exit
status, and nothing changed."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import CHROMA_CACHE, free_port
from tests.core.test_cli import ROOT, mami


def lines(output: str) -> dict[str, str]:
    """``{check name: status}`` from doctor's output (``ok``, ``WARN`` or ``FAIL``)."""
    found = {}
    for line in output.splitlines():
        status, _, rest = line.partition("  ")
        if status.strip() in ("ok", "WARN", "FAIL") and ":" in rest:
            found[rest.split(":", 1)[0].strip()] = status.strip()
    return found


def setup(tmp_path: Path, forge: str | None = None, core: str = "") -> None:
    """The shipped plugins.toml as it is (``forge``: a Forge URL set, ``""``: Forge
    disabled), ``core`` added to ``[core]``; the database upgraded."""
    shipped = (ROOT / "plugins.toml").read_text().replace("[core]", f"[core]\n{core}", 1)
    if forge is not None:
        images = f'enabled = true\nurl = "{forge}"' if forge else "enabled = false"
        shipped += f"\n[plugins.forge-image]\n{images}\n"
    (tmp_path / "plugins.toml").write_text(shipped)
    assert mami(["db", "upgrade"], tmp_path).returncode == 0


def test_a_healthy_setup_passes_every_check(tmp_path: Path) -> None:
    """The shipped configuration, untouched: no image server is configured, so image
    generation is off rather than failing."""
    setup(tmp_path)
    (tmp_path / "data").chmod(0o700)
    result = mami(["doctor"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    found = lines(result.stdout)
    assert "FAIL" not in found.values(), result.stdout
    for name in ("config", "data directory", "database", "plugin local-llm", "local model",
                 "llama.cpp build", "embedding model", "retrieval store", "memory store",
                 "signing key"):
        assert found.get(name) == "ok", (name, result.stdout)
    assert any(name.startswith("llm ") and status == "ok" for name, status in found.items())
    assert "0 failed" in result.stdout


def test_a_broken_setup_names_each_fault_and_its_fix(tmp_path: Path) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    setup(tmp_path, forge=unreachable, core="auto_migrate = false")
    # The schema is behind, and must stay so: doctor reports, it does not upgrade.
    assert mami(["db", "downgrade", "-1"], tmp_path).returncode == 0
    db = tmp_path / "data" / "mami.db"
    before = sqlite3.connect(db).execute("select version_num from alembic_version").fetchall()
    home = tmp_path / "home"  # no embedding model in this user's Chroma cache
    home.mkdir()
    result = mami(["doctor"], tmp_path, HOME=str(home))
    assert result.returncode == 1, result.stdout + result.stderr
    found = lines(result.stdout)
    assert found["database"] == "FAIL" and "run `mami db upgrade`" in result.stdout
    after = sqlite3.connect(db).execute("select version_num from alembic_version").fetchall()
    assert after == before
    # With the schema fixed, the other faults show.
    assert mami(["db", "upgrade"], tmp_path).returncode == 0
    result = mami(["doctor"], tmp_path, HOME=str(home))
    assert result.returncode == 1
    found = lines(result.stdout)
    assert found["embedding model"] == "FAIL", result.stdout
    assert "model.onnx" in result.stdout and "fix: copy the files" in result.stdout
    assert found["forge-image"] == "FAIL", result.stdout
    assert found["database"] == "ok" and found["local model"] == "ok"
    assert str(CHROMA_CACHE) not in result.stdout  # it looked in this HOME, not ours


def test_a_world_writable_data_directory_fails(tmp_path: Path) -> None:
    setup(tmp_path)
    (tmp_path / "data").chmod(0o777)
    result = mami(["doctor"], tmp_path)
    assert result.returncode == 1
    assert lines(result.stdout)["data directory"] == "FAIL"
    assert f"chmod 700 {tmp_path / 'data'}" in result.stdout
