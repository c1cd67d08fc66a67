"""``mami ingest PATH... --owner NAME [--scope S]``: store documents for retrieval
(text, Markdown, PDF, DOCX, HTML, CSV, JSON: :mod:`core.formats`). Every file is read
and checked before the first one is stored, so a bad file (empty, damaged, of an
unsupported type, over the limits) stops the command with its name and nothing written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from core import hookimpl
from core.errors import BadRequest
from core.formats import SUFFIXES, Limits

if TYPE_CHECKING:
    from core.api.documents import Upload


def cmd_ingest(args: argparse.Namespace) -> int:
    """Ingest files (directories: their files of a supported type: .txt, .md, .pdf,
    .docx, .html, .csv, .json, ...) for one owner."""
    return asyncio.run(_ingest(args))


def find_files(paths: list[str], follow_links: bool = False,
               skipped: list[Path] | None = None) -> list[Path]:
    """The files named, plus the text files under each directory named, in order and
    without repeats. A path that does not exist is an error naming it. A link under a
    directory that leads out of it is skipped (and added to ``skipped``) unless
    ``follow_links``: a link to a key file must not make it searchable."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            root = path.resolve()
            for child in sorted(path.rglob("*")):
                if not child.is_file() or child.suffix.lower() not in SUFFIXES:
                    continue
                if not follow_links and not child.resolve().is_relative_to(root):
                    if skipped is not None:
                        skipped.append(child)
                    continue
                found.setdefault(child, None)
        elif path.is_file():
            found.setdefault(path, None)
        else:
            raise BadRequest(f"{raw}: no such file or directory")
    if not found:
        raise BadRequest(f"no documents found in {', '.join(paths)} "
                         f"(types read: {', '.join(SUFFIXES)})")
    return list(found)


async def read_documents(files: list[Path], limits: Limits | None = None) -> list[Upload]:
    """Each file parsed; the source is the path as normalised."""
    from core.api.documents import read_upload

    limits = limits or Limits()
    documents = []
    for path in files:
        source = os.path.normpath(str(path))
        try:
            size = path.stat().st_size
            if size > limits.max_bytes:  # refused before it is read into memory
                from core.errors import PayloadTooLarge

                raise PayloadTooLarge(f"{source}: {size} bytes is more than the limit of "
                                      f"{limits.max_bytes} ([core] document_max_bytes)")
            data = path.read_bytes()
        except OSError as exc:
            raise BadRequest(f"{source}: cannot read: {exc.strerror}") from exc
        documents.append(await read_upload(source, data, limits))
    return documents


def progress(out: TextIO, done: int, total: int, chunks: int, name: str) -> None:
    """A one-line progress bar on a terminal; one line per file otherwise."""
    if out.isatty():
        filled = int(30 * done / total)
        bar = "#" * filled + "-" * (30 - filled)
        out.write(f"\r[{bar}] {done}/{total} files, {chunks} chunks {name[-40:]:<40}")
        if done == total:
            out.write("\n")
    else:
        out.write(f"[{done}/{total}] {name}: {chunks} chunks so far\n")
    out.flush()


async def _ingest(args: argparse.Namespace) -> int:
    from core.api.documents import limits_of, store_upload
    from core.config import load_config
    from core.runtime import Runtime

    skipped: list[Path] = []
    files = find_files(args.paths, args.follow_links, skipped)
    for link in skipped:
        print(f"mami: skipped {link}: a link out of the directory (see --follow-links)",
              file=sys.stderr)
    runtime = Runtime(load_config(args.config))
    documents = await read_documents(files, limits_of(runtime))
    await runtime.ensure_started()
    try:
        retriever = runtime.require("retriever")
        validate = getattr(retriever, "validate", None)
        if validate is not None:
            for doc in documents:
                validate(args.owner, doc.source, doc.text, args.scope)
        started, chunks = time.perf_counter(), 0
        for done, doc in enumerate(documents, 1):
            info = await store_upload(retriever, args.owner, doc, args.scope)
            chunks += info.chunks
            progress(sys.stderr, done, len(documents), chunks, doc.source)
        seconds = time.perf_counter() - started
        print(f"ingested {len(documents)} files, {chunks} chunks in {seconds:.2f} s "
              f"(owner {args.owner}, scope {args.scope})", flush=True)
    finally:
        await runtime.stop()
    return 0


@hookimpl
def register_commands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest", help="store documents (text, PDF, DOCX, HTML, CSV, JSON) for retrieval (RAG)",
        description=cmd_ingest.__doc__)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or directories")
    parser.add_argument("--owner", required=True, help="owner of the documents")
    parser.add_argument("--scope", default="default",
                        help="scope to file them under (default: default)")
    parser.add_argument("--follow-links", action="store_true",
                        help="also read files that links under a directory lead to outside it")
    parser.set_defaults(func=cmd_ingest)
