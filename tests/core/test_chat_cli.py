"""``mami chat``: a turn streamed to the terminal, in-process, with the local model; and
with a scripted model (a real OpenAI-compatible server over loopback, through
openai-llm) that calls the builtin-tools plugin's tools, the tool calls and the sources
printed around the answer."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugins import BUILTINS
from tests.scripted_model import Call, Reply, ScriptedModel, last_tool_results

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


GENERATOR = ("The emergency generator in the basement is tested every second Tuesday at "
             "seven in the morning by the facilities team.")


def looks_up_then_answers(body: dict[str, Any]) -> Reply:
    if last_tool_results(body):
        return Reply("It is tested every second Tuesday [1].")
    return Reply("Let me look.", [Call("search_documents", {"query": "generator tests", "k": 1}),
                                  Call("recall_memories", {"query": "generator"})])


def scripted_model_with_tools(tmp_path: Path, model: ScriptedModel) -> None:
    """plugins.toml: openai-llm on ``model``, builtin-tools, chroma-rag; memory off (so
    one tool fails)."""
    kept = {"openai-llm", "builtin-tools", "chroma-rag"}
    others = "".join(f"[plugins.{name}]\nenabled = false\n"
                     for name in BUILTINS if name not in kept)
    (tmp_path / "plugins.toml").write_text(
        "[budget]\nreply_tokens = 64\n"
        f'[plugins.openai-llm]\nenabled = true\nbase_url = "{model.url}"\n'
        'model = "scripted"\nattempts = 1\n'
        "[plugins.builtin-tools]\nenabled = true\n" + others)


def test_chat_prints_each_tool_call_and_the_sources(tmp_path: Path) -> None:
    """Tool calls go to stderr as they start and end (between the question and the
    answer); the answer's sources follow it on stdout, numbered as it cites them."""
    model = ScriptedModel(looks_up_then_answers).start()
    try:
        scripted_model_with_tools(tmp_path, model)
        (tmp_path / "generator.md").write_text(GENERATOR)
        ingest = mami(["ingest", "generator.md", "--owner", "ada"], tmp_path)
        assert ingest.returncode == 0, ingest.stderr
        chat = mami(["chat", "When is the generator tested?", "--owner", "ada"], tmp_path)
    finally:
        model.stop()
    assert chat.returncode == 0, chat.stderr
    assert [m.get("tools") is not None for m in model.requests] == [True, True]

    tools = [line for line in chat.stderr.splitlines() if line.startswith("[tool]")]
    assert tools[:2] == ['[tool] search_documents(query="generator tests", k=1)',
                         '[tool] recall_memories(query="generator")']
    ended = sorted(tools[2:])
    assert len(ended) == 2
    assert re.fullmatch(r"\[tool\] recall_memories error \(\d+ ms\): "
                        r"no memory plugin is enabled and running", ended[0]), ended[0]
    found = re.fullmatch(r'\[tool\] search_documents ok \(\d+ ms\): (\[\{"n": 1, '
                         r'"source": "generator\.md", .*)', ended[1])
    assert found and len(found.group(1)) <= 100 and found.group(1).endswith("..."), ended[1]
    assert chat.stderr.rstrip().splitlines()[-1].startswith("(conversation ")
    # The failure is shown once, by its [tool] line; no log line per model request.
    assert "mami.tools" not in chat.stderr and "httpx" not in chat.stderr, chat.stderr

    assert chat.stdout.splitlines() == [
        "Let me look.",  # the tool step's own text, ended before the tool lines
        "It is tested every second Tuesday [1].",
        "",
        "Sources:",
        '[1] generator.md, chunk 1: "The emergency generator in the basement is tested '
        'every..."',
    ]
    with sqlite3.connect(tmp_path / "data" / "mami.db") as db:
        rows = db.execute("SELECT role, content, status, tool_name FROM messages "
                          "ORDER BY seq").fetchall()
    assert [(r, s, t) for r, _, s, t in rows] == [
        ("user", "complete", None), ("assistant", "complete", None),
        ("tool", "complete", "search_documents"), ("tool", "error", "recall_memories"),
        ("assistant", "complete", None)]
    assert rows[-1][1] == "It is tested every second Tuesday [1]."


def test_chat_without_sources_or_tools_prints_only_the_answer(tmp_path: Path) -> None:
    """No documents and a model that calls no tool: stdout is the answer alone, and
    stderr has no tool lines."""
    model = ScriptedModel(lambda body: Reply("Hello there.")).start()
    try:
        scripted_model_with_tools(tmp_path, model)
        chat = mami(["chat", "Hi", "--owner", "ada"], tmp_path)
    finally:
        model.stop()
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == "Hello there.\n"
    lines = chat.stderr.splitlines()
    assert re.fullmatch(r"\(conversation \w+\)", lines[-1]), chat.stderr
    assert not [line for line in lines if "[tool]" in line or "httpx" in line], chat.stderr


def test_chat_warns_on_stderr_when_it_answers_without_the_documents(
        tmp_path: Path) -> None:
    """The documents' Chroma directory cannot be opened (read-only, even for root):
    the answer still comes, stdout is the answer alone, and stderr says before it that
    the documents were left out, and why."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    model = ScriptedModel(lambda body: Reply("Hello there.")).start()
    store = tmp_path / "data" / "chroma"
    try:
        scripted_model_with_tools(tmp_path, model)
        (tmp_path / "generator.md").write_text(GENERATOR)
        ingest = mami(["ingest", "generator.md", "--owner", "ada"], tmp_path)
        assert ingest.returncode == 0, ingest.stderr
        subprocess.run(["chattr", "-R", "+i", str(store)], check=True)
        chat = mami(["chat", "When is the generator tested?", "--owner", "ada"], tmp_path)
    finally:
        subprocess.run(["chattr", "-R", "-i", str(store)], check=False)
        model.stop()
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout == "Hello there.\n"
    warnings = [line for line in chat.stderr.splitlines() if line.startswith("[warning]")]
    assert len(warnings) == 1, chat.stderr
    assert warnings[0].startswith(f"[warning] documents unavailable: Chroma at {store} "
                                  "cannot be opened"), warnings
    assert warnings[0].endswith("then retry"), warnings  # the fix is shown whole
    assert GENERATOR not in json.dumps(model.requests)  # the prompt had no passage
