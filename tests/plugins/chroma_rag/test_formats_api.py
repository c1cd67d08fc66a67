"""PDF, DOCX, HTML, CSV and JSON through ``POST /api/documents`` and ``mami ingest``:
parsed by the real parsers, chunked, embedded and found by a search, PDF passages
naming their page; an unsupported type is a 415 and stores nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from core.app import create_app
from core.cli import main
from tests.document_files import make_csv, make_docx, make_html, make_json, make_pdf
from tests.plugins.chroma_rag.conftest import HEADER_AUTH, rag_candidates
from tests.plugins.chroma_rag.test_cli import stored

ALICE = {"Authorization": "Bearer alice"}
FILLER = ("This page describes the quarterly plan of the facilities team in some detail. "
          "Rooms, chairs and printers are counted and the numbers are written down. ") * 6
PAGES = [FILLER, FILLER + "The emergency generator is tested every second Tuesday "
         "at seven in the morning.", FILLER]


@pytest.fixture
def client_mode() -> str:
    return "embedded"


@pytest.fixture
async def client(make_config: Any,
                 rag_settings: dict[str, Any]) -> AsyncIterator[AsyncTestClient[Any]]:
    config = make_config(core={"auth": True, "document_max_pages": 5},
                         plugins={"chroma-rag": {**rag_settings, "chunk_tokens": 64,
                                                 "chunk_overlap": 8}})
    app = create_app(config, candidates=rag_candidates(HEADER_AUTH))
    async with AsyncTestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


async def search(client: AsyncTestClient[Any], query: str) -> list[dict[str, Any]]:
    found = await client.post("/api/search", headers=ALICE, json={"query": query, "k": 1})
    assert found.status_code == 200, found.text
    return list(found.json())


async def test_every_format_is_searchable(client: AsyncTestClient[Any]) -> None:
    files = [
        ("file", ("facilities.pdf", make_pdf(PAGES), "application/pdf")),
        ("file", ("policy.docx", make_docx("Travel policy", [
            "Trains are booked in second class; flights need the manager's approval."]),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document")),
        ("file", ("lighthouse.html", make_html("Lighthouses", [
            "The Cabo da Roca lighthouse stands on the westernmost point of mainland "
            "Europe and was first lit in 1772.",
            "Its keepers lived beside it with their families for two centuries."]),
            "text/html")),
        ("file", ("offices.csv", make_csv([["office", "city"], ["North", "Trondheim"],
                                           ["South", "Faro"]]), "text/csv")),
        ("file", ("pets.json", make_json([{"pet": "tortoise", "name": "Gustav"}]),
                  "application/json")),
    ]
    uploaded = await client.post("/api/documents", headers=ALICE, files=files)
    assert uploaded.status_code == 201, uploaded.text
    assert {d["source"] for d in uploaded.json()} == {f[1][0] for f in files}
    assert next(d for d in uploaded.json() if d["source"] == "facilities.pdf")["chunks"] > 3

    (hit,) = await search(client, "when is the emergency generator tested?")
    assert hit["source"] == "facilities.pdf" and hit["page"] == 2
    assert "second Tuesday" in " ".join(hit["text"].split())
    for query, source in [("which class are trains booked in", "policy.docx"),
                          ("westernmost lighthouse of Europe", "lighthouse.html"),
                          ("which city is the South office in", "offices.csv"),
                          ("what is the tortoise called", "pets.json")]:
        (hit,) = await search(client, query)
        assert hit["source"] == source, (query, hit)
        assert hit["page"] is None


@pytest.mark.parametrize(("name", "data", "status", "message"), [
    ("budget.xlsx", b"PK\x03\x04xx", 415, "budget.xlsx: unsupported file type .xlsx"),
    ("scan.pdf", b"%PDF-1.4\nbroken", 400, "scan.pdf: not a readable PDF file"),
    ("long.pdf", make_pdf(["page"] * 6), 413, "long.pdf: 6 pages is more than the limit of 5"),
])
async def test_a_refused_file_stores_nothing(client: AsyncTestClient[Any], name: str,
                                             data: bytes, status: int, message: str) -> None:
    good = ("file", ("good.md", b"A perfectly good document.", "text/markdown"))
    response = await client.post("/api/documents", headers=ALICE,
                                 files=[good, ("file", (name, data, "application/octet-stream"))])
    assert response.status_code == status, response.text
    error = response.json()["error"]["message"]
    assert error.startswith(message)
    assert "/tmp" not in error and str(Path.cwd()) not in error
    if status == 415:
        assert "supported: .txt" in error and ".pdf" in error
    assert (await client.get("/api/documents", headers=ALICE)).json() == []


def test_ingest_reads_pdf_and_docx_from_a_directory(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "plugins.toml").write_text(
        f'[core]\ndata_dir = "{tmp_path / "data"}"\nauth = false\n'
        "[plugins.local-llm]\nenabled = false\n[plugins.forge-image]\nenabled = false\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "facilities.pdf").write_bytes(make_pdf(PAGES))
    (docs / "policy.docx").write_bytes(make_docx("Policy", ["Flights need approval."]))
    (docs / "photo.png").write_bytes(b"\x89PNG\x00")  # not a document type: skipped
    config = str(tmp_path / "plugins.toml")
    assert main(["--config", config, "ingest", str(docs), "--owner", "alice"]) == 0
    assert "ingested 2 files" in capsys.readouterr().out
    assert sorted(Path(d.source).name for d in stored(tmp_path, "alice")) == [
        "facilities.pdf", "policy.docx"]
    (docs / "sheet.xlsx").write_bytes(b"PK\x03\x04")
    assert main(["--config", config, "ingest", str(docs / "sheet.xlsx"),
                 "--owner", "alice"]) == 1
    assert "sheet.xlsx: unsupported file type .xlsx" in capsys.readouterr().err


def test_chunks_of_a_paged_document_stay_within_their_page() -> None:
    import re

    from core.formats import page_of
    from plugins.chroma_rag.chunking import chunk_pages

    def words(text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]

    text = "a b c d e\n\nf g\n\n\n\nh i j"
    pages = (0, 11, 16, 18)  # the third page is empty
    chunks = chunk_pages(text, pages, words, 3, 1)
    assert [c.text for c in chunks] == ["a b c", "c d e", "f g", "h i j"]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert all(text[c.start:c.end] == c.text for c in chunks)
    assert [page_of(pages, c.start) for c in chunks] == [1, 1, 2, 4]
