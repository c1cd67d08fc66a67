"""``mami ingest``: progress, summary, and a bad file stopping everything by name."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from core.cli import main
from core.config import load_config
from core.protocols import DocumentInfo
from core.runtime import Runtime


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "plugins.toml").write_text(
        "[core]\n"
        f'data_dir = "{tmp_path / "data"}"\n'
        "auth = false\n"
        "[plugins.local-llm]\nenabled = false\n"
        "[plugins.forge-image]\nenabled = false\n"
        '[plugins.chroma-rag]\nscopes = ["default", "notes"]\nglobal_writers = ["ops"]\n'
    )
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("# Paris\nParis is the capital of France.\n")
    (docs / "sub" / "b.txt").write_text("Bananas are yellow.\n" * 200)
    (docs / "image.png").write_bytes(b"\x89PNG\x00\x00")  # not a text suffix: skipped
    (tmp_path / "c.markdown").write_text("The moon orbits the earth.")
    return tmp_path


def ingest(workdir: Path, *args: str) -> int:
    return main(["--config", str(workdir / "plugins.toml"), "ingest", *args])


def stored(workdir: Path, owner: str) -> list[DocumentInfo]:
    async def listing() -> list[DocumentInfo]:
        runtime = Runtime(load_config(workdir / "plugins.toml"))
        await runtime.ensure_started()
        try:
            return list(await runtime.require("retriever").list_documents(owner))
        finally:
            await runtime.stop()

    return asyncio.run(listing())


def test_ingest_reports_progress_and_a_summary(workdir: Path, capsys: Any) -> None:
    docs, extra = str(workdir / "docs"), str(workdir / "c.markdown")
    assert ingest(workdir, docs, extra, "--owner", "alice", "--scope", "notes") == 0
    out, err = capsys.readouterr()
    summary = re.search(r"ingested 3 files, (\d+) chunks in [\d.]+ s \(owner alice, scope notes\)",
                        out)
    assert summary, out
    assert "[1/3]" in err and "[3/3]" in err
    documents = stored(workdir, "alice")
    assert sorted(Path(d.source).name for d in documents) == ["a.md", "b.txt", "c.markdown"]
    assert sum(d.chunks for d in documents) == int(summary.group(1)) > 3
    assert {d.scope for d in documents} == {"notes"}
    assert ingest(workdir, docs, extra, "--owner", "alice", "--scope", "notes") == 0
    assert len(stored(workdir, "alice")) == 3  # ingesting again replaces


@pytest.mark.parametrize(("name", "content", "message"), [
    ("bin.md", b"text\x00more", "bin.md: binary file"),
    ("latin.txt", "caf\u00e9".encode("latin-1"), "latin.txt: not valid UTF-8"),
    ("empty.md", b"\n\n", "empty.md: the file is empty"),
])
def test_a_bad_file_stops_before_anything_is_written(
    workdir: Path, capsys: Any, name: str, content: bytes, message: str
) -> None:
    (workdir / name).write_bytes(content)
    assert ingest(workdir, str(workdir / "docs"), str(workdir / name), "--owner", "alice") == 1
    err = capsys.readouterr().err
    assert f"mami: error: {workdir / name}" in err and message in err
    assert stored(workdir, "alice") == []


@pytest.mark.parametrize(("args", "message"), [
    (["--scope", "secret"], "unknown scope 'secret' (allowed: default, notes, global)"),
    (["--scope", "global"], "only ops may write the shared 'global' scope"),
    (["missing.md"], "missing.md: no such file or directory"),
])
def test_bad_arguments_are_one_line_errors(workdir: Path, capsys: Any, args: list[str],
                                           message: str) -> None:
    paths = [a for a in args if a.endswith(".md")]
    options = [a for a in args if not a.endswith(".md")]
    code = ingest(workdir, str(workdir / "docs"), *paths, "--owner", "alice", *options)
    assert code == 1
    assert message in capsys.readouterr().err
    assert stored(workdir, "alice") == []


def test_links_out_of_a_directory_are_not_followed(workdir: Path, capsys: Any) -> None:
    (workdir / "secret.key.txt").write_text("ssh-private-key-material")
    (workdir / "docs" / "leak.txt").symlink_to(workdir / "secret.key.txt")
    (workdir / "docs" / "inside.md").symlink_to(workdir / "docs" / "a.md")  # stays inside
    assert ingest(workdir, str(workdir / "docs"), "--owner", "alice") == 0
    assert "skipped" in capsys.readouterr().err
    names = sorted(Path(d.source).name for d in stored(workdir, "alice"))
    assert names == ["a.md", "b.txt", "inside.md"]
    assert ingest(workdir, str(workdir / "docs"), "--owner", "bob", "--follow-links") == 0
    assert "leak.txt" in [Path(d.source).name for d in stored(workdir, "bob")]
