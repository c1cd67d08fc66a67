"""Reading documents for retrieval: text and Markdown, PDF, DOCX, HTML, CSV and JSON.

:func:`parse_document` turns a file's bytes into the text that is chunked and embedded,
for ``POST /api/documents`` and ``mami ingest`` alike. The type comes from the file
name's suffix (a file without one is sniffed: PDF, DOCX or UTF-8 text); any other type
is a 415 naming the supported ones. PDF keeps where each page starts in the text so
passages can name their page. Parsers (pypdf, python-docx, trafilatura) are imported
only when a file of their type arrives. Limits: ``[core] document_max_bytes`` (the
file's size) and ``document_max_pages`` (a PDF's pages).

Errors never name a server path: the name shown is the one the caller gave.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from core.errors import BadRequest, MamiError, PayloadTooLarge

__all__ = ["SUFFIXES", "Limits", "ParsedDocument", "UnsupportedType", "page_of",
           "parse_document"]

TEXT = (".txt", ".md", ".markdown", ".rst", ".text")
SUFFIXES: dict[str, str] = {
    **dict.fromkeys(TEXT, "text"),
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html", ".htm": "html", ".xhtml": "html",
    ".csv": "csv", ".tsv": "csv",
    ".json": "json", ".jsonl": "jsonl",
}
"""Suffix -> kind of every accepted file type."""

HINTS = {".doc": "save it as .docx", ".xls": "export it as .csv", ".xlsx": "export it as .csv",
         ".odt": "save it as .docx", ".rtf": "save it as .docx", ".pptx": "export it as PDF"}
JSON_ROWS = 100_000  # rows of a CSV/JSON file: each becomes a line of text
UNZIPPED_FACTOR = 20  # a DOCX may unpack to this many times document_max_bytes


class UnsupportedType(MamiError):
    """415: a file type mami does not read."""

    status_code = 415
    code = "unsupported_file_type"


@dataclass(frozen=True, slots=True)
class Limits:
    """``[core] document_max_bytes`` and ``document_max_pages``."""

    max_bytes: int = 10_000_000
    max_pages: int = 500


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    """A document's text; ``pages`` are the offsets in ``text`` where each page starts
    (PDF only, page 1 first), empty for formats without pages."""

    text: str
    kind: str
    pages: tuple[int, ...] = ()


def supported() -> str:
    return ", ".join(SUFFIXES)


def kind_of(name: str, data: bytes) -> str:
    """The kind of file ``name`` (see :data:`SUFFIXES`); a 415 for other suffixes."""
    suffix = PurePath(name).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if not suffix or len(suffix) > 12 or " " in suffix:  # no real suffix: look inside
        if data.startswith(b"%PDF-"):
            return "pdf"
        if data.startswith(b"PK\x03\x04") and b"word/" in data[:4096]:
            return "docx"
        if b"\x00" not in data[:8192]:
            return "text"
        raise UnsupportedType(f"{name}: unsupported file type (binary, no file name suffix); "
                              f"supported: {supported()}")
    hint = f" ({HINTS[suffix]})" if suffix in HINTS else ""
    raise UnsupportedType(f"{name}: unsupported file type {suffix}{hint}; "
                          f"supported: {supported()}")


def parse_document(name: str, data: bytes, limits: Limits = Limits()) -> ParsedDocument:
    """The text of file ``name``. 415 for an unsupported type, 413 over the limits, 400
    for a file that is empty, damaged or has no text (a scanned PDF without a text
    layer). CPU-bound: call it in a worker thread from async code."""
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"{name}: {len(data)} bytes is more than the limit of "
                              f"{limits.max_bytes} ([core] document_max_bytes)")
    kind = kind_of(name, data)
    if kind == "pdf":
        texts = _pdf_pages(name, data, limits.max_pages)
        text, pages = _join_pages(texts)
        return ParsedDocument(_require_text(name, text, "the PDF has no text layer "
                                            "(a scanned document? run OCR on it first)"),
                              kind, pages)
    readers: dict[str, Callable[[str, bytes, Limits], str]] = {
        "text": lambda n, d, _: decode_text(n, d),
        "docx": _docx, "html": _html, "csv": _csv, "json": _json, "jsonl": _jsonl,
    }
    return ParsedDocument(_require_text(name, readers[kind](name, data, limits)), kind)


def page_of(pages: Sequence[int], offset: int) -> int | None:
    """The 1-based page that the character at ``offset`` is on (``None`` without pages)."""
    return bisect_right(pages, offset) or None if pages else None


def decode_text(name: str, data: bytes) -> str:
    """UTF-8 text (a BOM dropped); 400 naming the file for binary or non-UTF-8 data."""
    if b"\x00" in data:
        raise BadRequest(f"{name}: binary file (contains NUL bytes); it is not text "
                         f"(supported types: {supported()})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{name}: not valid UTF-8 (at byte {exc.start})") from exc


def _require_text(name: str, text: str, why: str = "the file is empty") -> str:
    if not text.strip():
        raise BadRequest(f"{name}: {why}")
    return text


def _join_pages(texts: Sequence[str]) -> tuple[str, tuple[int, ...]]:
    parts: list[str] = []
    starts: list[int] = []
    at = 0
    for page in texts:
        starts.append(at)
        parts.append(page)
        at += len(page) + 2
    return "\n\n".join(parts), tuple(starts)


def _damaged(name: str, what: str, exc: Exception) -> BadRequest:
    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return BadRequest(f"{name}: not a readable {what} file ({detail})")


def _require(module: str, package: str, what: str) -> Any:
    """Import a parser; a server without it answers 415 saying what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UnsupportedType(f"{what} files are not read by this server: it needs "
                              f"{package} (pip install 'mami[documents]')") from exc


def _pdf_pages(name: str, data: bytes, max_pages: int) -> list[str]:
    _require("pypdf", "pypdf", "PDF")
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise BadRequest(f"{name}: the PDF is password-protected")
        count = len(reader.pages)
        if count > max_pages:
            raise PayloadTooLarge(f"{name}: {count} pages is more than the limit of "
                                  f"{max_pages} ([core] document_max_pages)")
        return [_clean(page.extract_text() or "") for page in reader.pages]
    except MamiError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError,
            RecursionError, zlib_error()) as exc:
        raise _damaged(name, "PDF", exc) from exc


def zlib_error() -> type[Exception]:
    import zlib

    return zlib.error


def _clean(text: str) -> str:
    # PDF text layers end lines with spaces and carry NULs from odd fonts.
    lines = (line.rstrip() for line in text.replace("\x00", "").splitlines())
    return "\n".join(lines).strip()


def _unzipped_size(name: str, data: bytes, limit: int) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            size = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise _damaged(name, "DOCX", exc) from exc
    if size > limit:
        raise PayloadTooLarge(f"{name}: unpacks to {size} bytes, more than {limit}")


def _docx(name: str, data: bytes, limits: Limits) -> str:
    _require("docx", "python-docx", "DOCX")
    from docx import Document
    from docx.table import Table

    _unzipped_size(name, data, limits.max_bytes * UNZIPPED_FACTOR)
    try:
        document = Document(io.BytesIO(data))
        blocks: list[str] = []
        for block in document.iter_inner_content():
            if isinstance(block, Table):
                for row in block.rows:
                    cells = [cell.text.strip() for cell in row.cells]
                    blocks.append(" | ".join(_unique(cells)))
            elif block.text.strip():
                blocks.append(block.text.strip())
    except MamiError:
        raise
    except Exception as exc:  # python-docx raises KeyError, ValueError, lxml errors...
        raise _damaged(name, "DOCX", exc) from exc
    return "\n\n".join(blocks)


def _unique(cells: list[str]) -> list[str]:
    # A merged cell is repeated once per grid column it spans.
    out: list[str] = []
    for cell in cells:
        if not out or cell != out[-1]:
            out.append(cell)
    return out


def _html(name: str, data: bytes, limits: Limits) -> str:
    trafilatura = _require("trafilatura", "trafilatura", "HTML")

    markup = data.decode("utf-8", errors="replace") if b"\x00" not in data else None
    if markup is None:
        raise BadRequest(f"{name}: binary data, not HTML")
    try:
        text = trafilatura.extract(markup, include_tables=True, include_comments=False,
                                   include_links=False, favor_recall=True)
    except Exception as exc:  # a page trafilatura cannot parse
        raise _damaged(name, "HTML", exc) from exc
    if not text:  # too short for main-text detection: take the whole visible text
        text = trafilatura.html2txt(markup) or ""
    return str(text)


def _rows_text(rows: Sequence[Any]) -> str:
    return "\n".join(rows)


def _csv(name: str, data: bytes, limits: Limits) -> str:
    """One line per row: ``column: value`` pairs when the first row looks like a header
    (names, no numbers), else the cells joined with ``; ``."""
    text = decode_text(name, data)
    delimiter = "\t" if name.lower().endswith(".tsv") else None
    try:
        dialect: Any = csv.excel_tab if delimiter else csv.Sniffer().sniff(text[:8192], ",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(_limited(csv.reader(io.StringIO(text), dialect), name))
    except csv.Error as exc:
        raise _damaged(name, "CSV", exc) from exc
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        return ""
    header = [cell.strip() for cell in rows[0]]
    has_header = len(rows) > 1 and _looks_like_header(header)
    if not has_header:
        return _rows_text(["; ".join(c.strip() for c in row) for row in rows])
    lines = []
    for row in rows[1:]:
        pairs = [f"{h.strip()}: {v.strip()}" for h, v in zip(header, row, strict=False)
                 if v.strip()]
        lines.append("; ".join(pairs))
    return _rows_text(lines)


def _looks_like_header(cells: list[str]) -> bool:
    """Names, not data: every cell filled, no two alike, none a number."""
    def number(cell: str) -> bool:
        try:
            float(cell.replace(",", ""))
        except ValueError:
            return False
        return True

    return all(cells) and len(set(cells)) == len(cells) and not any(map(number, cells))


def _limited(rows: Any, name: str) -> Any:
    for index, row in enumerate(rows):
        if index >= JSON_ROWS:
            raise PayloadTooLarge(f"{name}: more than {JSON_ROWS} rows")
        yield row


def _json(name: str, data: bytes, limits: Limits) -> str:
    """An array: one line per item; an object: one line per key (nested values flat)."""
    try:
        value = json.loads(decode_text(name, data))
    except (ValueError, RecursionError) as exc:
        raise _damaged(name, "JSON", exc) from exc
    items = value if isinstance(value, list) else [value]
    if len(items) > JSON_ROWS:
        raise PayloadTooLarge(f"{name}: more than {JSON_ROWS} items")
    if isinstance(value, dict):
        return _rows_text([f"{k}: {_flat(v)}" for k, v in value.items()])
    return _rows_text([_flat(item) for item in items])


def _jsonl(name: str, data: bytes, limits: Limits) -> str:
    lines: list[str] = []
    for number, line in enumerate(decode_text(name, data).splitlines(), 1):
        if not line.strip():
            continue
        if len(lines) >= JSON_ROWS:
            raise PayloadTooLarge(f"{name}: more than {JSON_ROWS} lines")
        try:
            lines.append(_flat(json.loads(line)))
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"{name}: line {number} is not valid JSON") from exc
    return _rows_text(lines)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_flat(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_flat(v) for v in value)
    return "" if value is None else str(value)
