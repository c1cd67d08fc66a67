"""Ingest rate of a 50-page PDF, through the path an upload takes: parse (pypdf, in a
worker thread), chunk page by page, embed, write Chroma and SQL. Baseline in the same
run: the same text as a plain ``.txt`` file, so the PDF's own cost shows.

    python bench/document_ingest.py [--pages 50] [--rounds 3]

The PDF is made with fpdf2 (a real text layer, about 330 words a page of varied prose).
Saved to ``bench/results/document_ingest.txt``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.api.documents import read_upload, store_upload  # noqa: E402
from core.config import config_from_dict  # noqa: E402
from core.formats import Limits  # noqa: E402
from core.plugins import builtin_candidates  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from tests.document_files import make_pdf  # noqa: E402

WORDS = [
    "budget", "meeting", "invoice", "travel", "garden", "river", "station", "printer",
    "contract", "review", "schedule", "doctor", "library", "harbour", "festival", "engine",
    "policy", "winter", "market", "lecture", "the", "a", "of", "to", "and", "in", "for",
    "with", "on", "by", "from", "at", "every", "each", "week", "month", "team", "office",
]


def page_text(rng: random.Random, number: int) -> str:
    sentences = []
    for _ in range(30):
        words = [rng.choice(WORDS) for _ in range(rng.randint(8, 14))]
        sentences.append(" ".join(words).capitalize() + ".")
    return f"Page {number}. " + " ".join(sentences)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(7)
    pages = [page_text(rng, n) for n in range(1, args.pages + 1)]
    pdf = make_pdf(pages)
    lines: list[str] = []

    def out(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    out(f"document_ingest: {args.pages}-page PDF of {len(pdf) / 1e3:.0f} kB "
        f"({sum(len(p.split()) for p in pages)} words), {args.rounds} rounds, median; "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        config = config_from_dict({"core": {"data_dir": tmp, "auth": False,
                                            "database_url": f"sqlite:///{tmp}/b.db"}})
        runtime = Runtime(config, [c for c in builtin_candidates() if c.name == "chroma-rag"])
        await runtime.ensure_started()
        retriever = runtime.require("retriever")
        limits = Limits()
        text = (await read_upload("warm.pdf", pdf, limits)).text
        await retriever.ingest("warm-up", "warm.txt", text)  # model loaded, tables made
        parse, pdf_total, txt_total, chunks = [], [], [], 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            upload = await read_upload("report.pdf", pdf, limits)
            parsed = time.perf_counter()
            chunks = (await store_upload(retriever, "alice", upload, "default")).chunks
            done = time.perf_counter()
            parse.append(parsed - started)
            pdf_total.append(done - started)
            started = time.perf_counter()
            plain = await read_upload("report.txt", upload.text.encode(), limits)
            await store_upload(retriever, "alice", plain, "default")
            txt_total.append(time.perf_counter() - started)
        await runtime.stop()
    p, t, b = (statistics.median(x) for x in (parse, pdf_total, txt_total))
    out(f"PDF: parse {p:.2f} s ({args.pages / p:.0f} pages/s), parse + chunk + embed + store "
        f"{t:.2f} s = {args.pages / t:.1f} pages/s, {chunks} chunks ({chunks / t:.0f} chunks/s)")
    out(f"same text as .txt (baseline): {b:.2f} s = {args.pages / b:.1f} pages/s; the PDF "
        f"costs {t / b:.2f}x")
    target = ROOT / "bench" / "results" / "document_ingest.txt"
    target.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
