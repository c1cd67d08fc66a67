"""The `mami` command line: help, db commands, serve, and clear errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def mami(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "MAMI_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(ROOT), **env}
    full_env.pop("MAMI_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd, env=full_env,
                          text=True, capture_output=True, timeout=180)


def test_help_lists_every_command_with_a_description(tmp_path: Path) -> None:
    out = mami(["--help"], tmp_path).stdout
    for command in ("serve", "db", "plugins"):
        line = next(line for line in out.splitlines() if line.strip().startswith(command))
        assert len(line.split()) > 1, f"{command} has no description"
    for command in (["serve"], ["db"], ["plugins"]):  # their docstrings, as users read them
        shown = mami([*command, "--help"], tmp_path).stdout
        assert "``" not in shown and ":func:" not in shown, shown


def test_db_commands_on_sqlite(tmp_path: Path) -> None:
    assert "empty" in mami(["db", "current"], tmp_path).stdout
    check = mami(["db", "check"], tmp_path)
    assert check.returncode == 1 and "run `mami db upgrade`" in check.stderr
    assert mami(["db", "upgrade"], tmp_path).returncode == 0
    assert "up to date" in mami(["db", "current"], tmp_path).stdout
    assert "no drift" in mami(["db", "check"], tmp_path).stdout
    assert mami(["db", "downgrade", "base", "--yes"], tmp_path).returncode == 0
    assert "empty" in mami(["db", "current"], tmp_path).stdout


def test_db_upgrade_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    result = mami(["db", "upgrade"], tmp_path, MAMI_DATABASE_URL=postgres_url)
    assert result.returncode == 0, result.stderr
    assert "no drift" in mami(["db", "check"], tmp_path, MAMI_DATABASE_URL=postgres_url).stdout


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    missing = mami(["--config", "nope.toml", "plugins"], tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "mami: error: nope.toml: configuration file not found"
    (tmp_path / "plugins.toml").write_text("[core]\nport = 80\n[server]\nport = 'x'\n")
    bad = mami(["db", "current"], tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "[core] port: unknown setting" in bad.stderr
    (tmp_path / "plugins.toml").write_text("[core\n")
    broken = mami(["plugins"], tmp_path)
    assert "plugins.toml: invalid TOML" in broken.stderr


def test_a_plugin_command_with_a_broken_config_names_the_config_error(tmp_path: Path) -> None:
    """`mami token create` after a typo in plugins.toml: the token command comes from a
    plugin, so argparse said "invalid choice: 'token'" (status 2) instead of the typo."""
    (tmp_path / "plugins.toml").write_text("[plugins.memory]\nfoo = 1\n")
    for args in (["token", "create", "--owner", "alice"],
                 ["--config", "plugins.toml", "--debug", "token", "list"]):
        result = mami(args, tmp_path)
        assert result.returncode == 1, result.stderr
        assert "invalid choice" not in result.stderr
        assert result.stderr.strip().endswith(
            "mami: error: plugins.toml: [plugins.memory] foo: unknown setting (known: "
            "chroma_token, chroma_url, collection_prefix, duplicate_threshold, embedder, "
            "extraction_max_tokens, llm_extraction, max_chars, max_facts, max_k, model_dir, "
            "path, shared_max_memories, write_behind)"), result.stderr
    unknown = mami(["tokn", "list"], tmp_path)  # a typo of the command itself
    assert unknown.returncode == 1 and "[plugins.memory] foo" in unknown.stderr


def test_serve_starts_and_health_lists_every_enabled_plugin(tmp_path: Path) -> None:
    shutil.copy(ROOT / "plugins.toml", tmp_path / "plugins.toml")
    port = free_port()
    env = {**os.environ, "MAMI_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.cli", "serve", "--port", str(port)], cwd=tmp_path,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None and health.status_code == 200
        body = health.json()
        enabled = [line.split()[0] for line in mami(["plugins"], tmp_path).stdout.splitlines()
                   if "disabled" not in line]
        assert set(enabled) <= set(body["plugins"])
        assert body["status"] in ("ok", "degraded")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)
    assert f"mami: serving on http://127.0.0.1:{port}" in output
    assert "Application shutdown complete" in output
