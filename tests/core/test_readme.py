"""The README's commands and its plugin example are true."""

from __future__ import annotations

import re
import sys
from functools import partial
from importlib import import_module
from pathlib import Path
from typing import Any

from litestar.testing import AsyncTestClient

from core.app import create_app, runtime_of
from core.events import MessageCompleted
from core.plugins import Candidate

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    bash = code_blocks("bash")
    test_command = next(b.strip() for b in bash if "pytest" in b)
    ci_lines = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci_lines[-1] == test_command
    install = bash[0].strip()
    assert install.endswith("mami serve")
    for command in (install, test_command):  # a fresh venv, a portable uncached build
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
        assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir -e' in command


async def test_readme_plugin_example_works(make_config: Any, tmp_path: Path,
                                           monkeypatch: Any) -> None:
    source = next(b for b in code_blocks("python") if "hookimpl" in b)
    assert len([line for line in source.splitlines() if line.strip()]) <= 30
    (tmp_path / "word_counter.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("word_counter", None)
    candidate = Candidate("word-counter", "word_counter", "entrypoint", True,
                          partial(import_module, "word_counter"))
    app = create_app(make_config(plugins={"word-counter": {"per": 1}}), candidates=[candidate])
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
        runtime = runtime_of(app)
        event = MessageCompleted("local", "c", "m", "u", "hi", "one two three")
        assert await runtime.fire("message_completed", event=event) == []
        response = await client.get("/word-count")
    assert response.json() == {"words": 3}
