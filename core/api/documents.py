"""Documents for retrieval (RAG), always the caller's own.

``POST /api/documents``: JSON ``{"source", "text", "scope"}`` or a multipart form with
one or more ``file`` parts (and an optional ``scope`` field); every file is read
(text, Markdown, PDF, DOCX, HTML, CSV, JSON: see :mod:`core.formats`) and checked
before the first is stored. ``GET /api/documents``, ``DELETE /api/documents/{id}``,
``DELETE /api/documents`` (erase all of the caller's), and ``POST /api/search`` to see
what retrieval finds. The owner is the authenticated principal, never the body.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar import Controller, Request, delete, get, post
from litestar.datastructures import UploadFile

from core.api.bodies import check_body, json_body
from core.errors import BadRequest, NotFound
from core.formats import Limits, parse_document
from core.protocols import DocumentInfo, Principal, Retriever
from core.runtime import Runtime
from core.security import ACCEPTS_UPLOADS


@dataclass
class DocumentOut:
    id: str
    scope: str
    source: str
    chunks: int
    created_at: datetime | None = None


@dataclass
class DocumentIn:
    """A document sent as JSON."""

    source: str
    text: str
    scope: str = "default"


@dataclass
class SearchRequest:
    query: str
    k: int = 5
    scopes: list[str] | None = None


@dataclass
class PassageOut:
    text: str
    document_id: str
    source: str
    chunk_index: int
    scope: str
    score: float
    page: int | None = None


@dataclass
class Erased:
    deleted: int


@dataclass(frozen=True)
class Upload:
    source: str
    text: str
    pages: tuple[int, ...] = ()
    """Offsets in ``text`` where each page starts (PDF); empty otherwise."""


def limits_of(runtime: Runtime) -> Limits:
    core = runtime.config.core
    return Limits(core.document_max_bytes, core.document_max_pages)


async def read_upload(name: str, data: bytes, limits: Limits) -> Upload:
    """An uploaded or ingested file as text (parsed in a worker thread); 400, 413 or 415
    naming the file when it cannot be read."""
    parsed = await asyncio.to_thread(parse_document, name, data, limits)
    return Upload(name, parsed.text, parsed.pages)


async def store_upload(retriever: Retriever, owner: str, upload: Upload,
                       scope: str) -> DocumentInfo:
    """``retriever.ingest`` with the pages when there are some and the retriever takes
    them (``pages`` is an optional keyword of :meth:`Retriever.ingest`)."""
    if upload.pages and _takes_pages(retriever):
        return await retriever.ingest(owner, upload.source, upload.text, scope,
                                      pages=upload.pages)  # type: ignore[call-arg]
    return await retriever.ingest(owner, upload.source, upload.text, scope)


def _takes_pages(retriever: Retriever) -> bool:
    try:
        return "pages" in inspect.signature(retriever.ingest).parameters
    except (TypeError, ValueError):
        return False


def uploads_problem(uploads: Sequence[Upload]) -> str | None:
    sources = [u.source for u in uploads]
    return "two files have the same name" if len(set(sources)) != len(sources) else None


def decode_text(name: str, data: bytes) -> str:
    """The text of an uploaded or ingested file, or a 400 naming it: empty, binary
    (a NUL byte) and invalid UTF-8 files are refused. A UTF-8 BOM is dropped."""
    if b"\x00" in data:
        raise BadRequest(f"{name}: binary file (contains NUL bytes); only UTF-8 text is accepted")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{name}: not valid UTF-8 (at byte {exc.start})") from exc
    if not text.strip():
        raise BadRequest(f"{name}: the file is empty")
    return text


def _out(info: DocumentInfo) -> DocumentOut:
    return DocumentOut(info.id, info.scope, info.source, info.chunks, info.created_at)


FORM_VALUES = ("scope", "source", "text")
"""The plain (non-file) fields of a multipart upload; every file part is a document."""


async def _uploads(request: Request[Any, Any, Any],
                   limits: Limits) -> tuple[list[Upload], str]:
    """The documents of a JSON or multipart request and the scope they go to. 400 naming
    the field for an unknown field, a wrong JSON type, or (multipart) a plain field sent
    as a file part (``-F scope=@file`` instead of ``-F scope=work``)."""
    if request.content_type[0] == "multipart/form-data":
        form = await request.form()
        for key, value in form.multi_items():
            name = value.filename if isinstance(value, UploadFile) else value
            if "\x00" in str(name or "") or "\x00" in key:
                raise BadRequest(f"{key}: contains a NUL character", param=key)
            if key in FORM_VALUES and isinstance(value, UploadFile):
                raise BadRequest(
                    f"{key}: must be a plain form value, not a file part (with curl: "
                    f"-F '{key}=value', or -F '{key}=<file' for a file's contents; "
                    f"'@' uploads a file)", param=key)
            if key not in FORM_VALUES and not isinstance(value, UploadFile):
                raise BadRequest(f"unknown form field: {key} (known: file parts, "
                                 f"{', '.join(FORM_VALUES)})", param=key)
        scope = form.get("scope") or "default"
        uploads: list[Upload] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                name = value.filename or key
                uploads.append(await read_upload(name, await value.read(), limits))
        if isinstance(form.get("text"), str):
            source = str(form.get("source") or "")
            uploads.append(Upload(source, decode_text(source or "text", form["text"].encode())))
        if not uploads:
            raise BadRequest("no file in the form (send one or more 'file' parts)")
        return uploads, str(scope)
    body = check_body(await json_body(request), DocumentIn)
    source = body["source"]
    scope = body.get("scope", "default")
    return [Upload(source, decode_text(source or "text", body["text"].encode()))], scope


class DocumentController(Controller):
    path = "/api/documents"
    tags = ["documents"]

    @post("/", status_code=201, opt={ACCEPTS_UPLOADS: True})
    async def upload(self, request: Request[Any, Any, Any], runtime: Runtime,
                     principal: Principal) -> list[DocumentOut]:
        """Store documents for retrieval. The same source and scope again replaces the
        document. Files: .txt, .md, .pdf, .docx, .html, .csv, .json and the like (415 for
        other types, naming the supported ones); 400 for an empty, damaged or non-UTF-8
        file or an unknown scope; 413 over ``[core] document_max_bytes`` or
        ``document_max_pages``."""
        retriever: Retriever = runtime.require("retriever")
        uploads, scope = await _uploads(request, limits_of(runtime))
        problem = uploads_problem(uploads)
        if problem:
            raise BadRequest(problem)
        validate = getattr(retriever, "validate", None)  # optional: check all, then write
        if validate is not None:
            for u in uploads:
                validate(principal.owner, u.source, u.text, scope)
        return [_out(await store_upload(retriever, principal.owner, u, scope)) for u in uploads]

    @get("/")
    async def list_documents(self, runtime: Runtime, principal: Principal) -> list[DocumentOut]:
        """The caller's documents, newest first."""
        retriever: Retriever = runtime.require("retriever")
        return [_out(info) for info in await retriever.list_documents(principal.owner)]

    @delete("/{document_id:str}", status_code=204)
    async def remove(self, runtime: Runtime, principal: Principal, document_id: str) -> None:
        """Delete one of the caller's documents (404 if the caller has none by that id)."""
        retriever: Retriever = runtime.require("retriever")
        if not await retriever.delete_document(principal.owner, document_id):
            raise NotFound(f"document {document_id} not found")

    @delete("/", status_code=200)
    async def erase(self, runtime: Runtime, principal: Principal) -> Erased:
        """Erase every document of the caller (the right to be forgotten)."""
        retriever: Retriever = runtime.require("retriever")
        return Erased(await retriever.erase_owner(principal.owner))


@post("/api/search", status_code=200, tags=["documents"],
      summary="Search the caller's documents (for debugging retrieval)")
async def search(runtime: Runtime, principal: Principal, data: SearchRequest,
                 request: Request[Any, Any, Any]) -> list[PassageOut]:
    """The passages retrieval finds for ``query`` among the caller's documents (and
    the shared ones), best first. 400 for an empty query, an unknown scope, an unknown
    field or a value of the wrong JSON type."""
    check_body(await request.json(), SearchRequest)
    retriever: Retriever = runtime.require("retriever")
    found = await retriever.search(principal.owner, data.query, data.k, data.scopes)
    return [PassageOut(p.text, p.document_id, p.source, p.chunk_index, p.scope, p.score,
                       p.page) for p in found]


routes: list[Any] = [DocumentController, search]
