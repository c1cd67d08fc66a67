"""``mami chat``: a turn streamed to the terminal, in-process, with the local model."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from plugins import BUILTINS

ROOT = Path(__file__).resolve().parents[2]


def mami(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MAMI_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(ROOT)}
    env.pop("MAMI_CONFIG", None)
    env.pop("MAMI_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=180)


def only_the_local_model(tmp_path: Path) -> None:
    others = "".join(f"[plugins.{name}]\nenabled = false\n"
                     for name in BUILTINS if name != "local-llm")
    (tmp_path / "plugins.toml").write_text(f"[budget]\nreply_tokens = 16\n{others}")


def test_chat_streams_a_reply_and_continues_a_conversation(tmp_path: Path) -> None:
    only_the_local_model(tmp_path)
    first = mami(["chat", "My name is Ada.", "--owner", "ada"], tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()
    found = re.search(r"\(conversation (\w+)\)", first.stderr)
    assert found
    second = mami(["chat", "What is my name?", "--owner", "ada", "--conversation",
                   found.group(1)], tmp_path)
    assert second.returncode == 0, second.stderr
    with sqlite3.connect(tmp_path / "data" / "mami.db") as db:
        rows = db.execute("SELECT c.owner_id, m.role, m.content, m.status FROM messages m "
                          "JOIN conversations c ON c.id = m.conversation_id "
                          "ORDER BY m.seq").fetchall()
    assert [(o, r, s) for o, r, _, s in rows] == [("ada", "user", "complete"),
                                                  ("ada", "assistant", "complete")] * 2
    assert rows[1][2] == first.stdout.strip() and rows[3][2] == second.stdout.strip()


def test_chat_errors_are_one_line(tmp_path: Path) -> None:
    only_the_local_model(tmp_path)
    huge = mami(["chat", "lorem " * 9000], tmp_path)
    assert huge.returncode == 1 and "Traceback" not in huge.stderr
    assert re.search(r"mami: error: the message is \d+ tokens", huge.stderr)
    missing = mami(["chat", "hi", "--conversation", "nope"], tmp_path)
    assert missing.returncode == 1
    assert "mami: error: conversation nope not found" in missing.stderr


def test_with_auth_off_the_page_sees_the_chats_of_mami_chat(
        tmp_path: Path, live_server: Any) -> None:
    """Issue 18: without sign-in, ``mami chat`` and the page (the native API) are the same
    owner, ``[core] local_owner``."""
    from core.app import create_app
    from core.config import load_config

    only_the_local_model(tmp_path)
    config_file = tmp_path / "plugins.toml"
    config_file.write_text(f'[core]\nauth = false\ndata_dir = "{tmp_path / "data"}"\n'
                           + config_file.read_text())
    chat = mami(["chat", "Remember the tulips."], tmp_path)
    assert chat.returncode == 0, chat.stderr
    found = re.search(r"\(conversation (\w+)\)", chat.stderr)
    assert found
    server = live_server(create_app(load_config(str(config_file))))
    listed = httpx.get(f"{server.url}/api/conversations", timeout=30).json()
    assert [c["id"] for c in listed] == [found.group(1)]
    assert listed[0]["title"] == "Remember the tulips."
