"""Real document files made in the tests: PDF (fpdf2, a text layer per page), DOCX
(python-docx), HTML with navigation and footer boilerplate, CSV and JSON."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence


def make_pdf(pages: Sequence[str]) -> bytes:
    """A PDF with one page per string, each written as real text (Helvetica)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def make_image_pdf() -> bytes:
    """A PDF whose only page is an image: no text layer, as a scan without OCR."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(out, format="PDF")
    return out.getvalue()


def make_docx(title: str, paragraphs: Sequence[str],
              table: Sequence[Sequence[str]] = ()) -> bytes:
    from docx import Document

    document = Document()
    document.add_heading(title, level=1)
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


BOILERPLATE = "Subscribe to our newsletter"


def make_html(title: str, paragraphs: Sequence[str]) -> bytes:
    """An article page with a menu, a cookie banner, a sidebar and a footer."""
    body = "\n".join(f"<p>{p}</p>" for p in paragraphs)
    return f"""<!doctype html><html><head><title>{title}</title>
<style>body {{ font-family: sans-serif }}</style><script>var tracking = "ga-123";</script>
</head><body>
<header><nav><a href="/">Home</a> | <a href="/about">About us</a> | <a href="/shop">Shop</a>
</nav></header>
<div class="cookie-banner">We use cookies. Accept all cookies?</div>
<main><article><h1>{title}</h1>
{body}
</article></main>
<aside><h3>Related</h3><ul><li><a href="/x">Ten tips you will not believe</a></li></ul></aside>
<footer><p>{BOILERPLATE}! Copyright 2026 Example Corp. All rights reserved.</p></footer>
</body></html>""".encode()


def make_csv(rows: Sequence[Sequence[str]]) -> bytes:
    import csv

    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue().encode()


def make_json(value: object) -> bytes:
    return json.dumps(value).encode()
