"""Document formats: real files made with fpdf2, python-docx and by hand, read by the
real parsers (pypdf, python-docx, trafilatura); other types and oversized files refused
with a message naming the file."""

from __future__ import annotations

import io
import zipfile

import pytest

from core.errors import BadRequest, MamiError, PayloadTooLarge
from core.formats import Limits, UnsupportedType, page_of, parse_document
from tests.document_files import (
    BOILERPLATE,
    make_csv,
    make_docx,
    make_html,
    make_image_pdf,
    make_json,
    make_pdf,
)


def test_pdf_text_layer_with_page_offsets() -> None:
    pages = ["Apples grow in orchards.", "The Eiffel Tower is 330 metres tall.",
             "Bananas are yellow."]
    parsed = parse_document("guide.pdf", make_pdf(pages))
    assert parsed.kind == "pdf"
    for number, text in enumerate(pages, 1):
        at = parsed.text.index(text)
        assert page_of(parsed.pages, at) == number
        assert page_of(parsed.pages, at + len(text) - 1) == number
    assert page_of((), 10) is None


def test_pdf_problems_are_named() -> None:
    with pytest.raises(BadRequest, match=r"scan\.pdf: the PDF has no text layer"):
        parse_document("scan.pdf", make_image_pdf())
    with pytest.raises(BadRequest, match=r"broken\.pdf: not a readable PDF file"):
        parse_document("broken.pdf", b"%PDF-1.7\nthis is not a PDF body")
    with pytest.raises(PayloadTooLarge, match=r"long\.pdf: 4 pages is more than the limit of 3"):
        parse_document("long.pdf", make_pdf(["a"] * 4), Limits(max_pages=3))


def test_sniffed_without_suffix() -> None:
    assert parse_document("upload", make_pdf(["Sniffed PDF text."])).kind == "pdf"
    assert parse_document("notes", b"plain words").kind == "text"
    with pytest.raises(UnsupportedType, match="binary, no file name suffix"):
        parse_document("blob", b"\x89PNG\x00\x00\x00")


def test_docx_paragraphs_and_tables_in_order() -> None:
    data = make_docx("Travel policy", ["Trains are booked in second class.",
                                       "Flights need approval."],
                     [["city", "allowance"], ["Lisbon", "120 EUR"]])
    text = parse_document("policy.docx", data).text
    assert text.index("Travel policy") < text.index("Trains") < text.index("Flights")
    assert "Lisbon | 120 EUR" in text


def test_docx_damaged_and_zip_bomb() -> None:
    with pytest.raises(BadRequest, match=r"bad\.docx: not a readable DOCX file"):
        parse_document("bad.docx", b"PK\x03\x04 not really a zip")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"\x00" * 3_000_000)
    with pytest.raises(PayloadTooLarge, match="unpacks to 3000000 bytes"):
        parse_document("bomb.docx", bomb.getvalue(), Limits(max_bytes=100_000))


def test_html_main_text_without_boilerplate() -> None:
    article = ["The Cabo da Roca lighthouse stands on the westernmost point of mainland "
               "Europe. It was first lit in 1772 and is seen from 26 nautical miles.",
               "Its keepers lived beside it with their families for two centuries, "
               "logging every ship that passed the cape in heavy weather."]
    text = parse_document("lighthouse.html", make_html("Lighthouses", article)).text
    assert "westernmost point" in text and "keepers lived" in text
    for noise in (BOILERPLATE, "Accept all cookies", "ga-123", "About us", "Ten tips"):
        assert noise not in text


def test_csv_and_json_rows_as_text() -> None:
    rows = make_csv([["city", "country"], ["Lisbon", "Portugal"], ["Oslo", "Norway"]])
    assert parse_document("cities.csv", rows).text == (
        "city: Lisbon; country: Portugal\ncity: Oslo; country: Norway")
    assert parse_document("n.csv", make_csv([["1", "2"], ["3", "4"]])).text == "1; 2\n3; 4"
    items = make_json([{"name": "Ann", "tags": ["a", "b"]}, {"name": "Bo", "age": 4}])
    assert parse_document("people.json", items).text == "name: Ann; tags: a, b\nname: Bo; age: 4"
    assert parse_document("one.json", make_json({"k": {"x": 1}})).text == "k: x: 1"
    assert parse_document("l.jsonl", b'{"a": 1}\n\n{"a": 2}\n').text == "a: 1\na: 2"
    with pytest.raises(BadRequest, match=r"l\.jsonl: line 2 is not valid JSON"):
        parse_document("l.jsonl", b'{"a": 1}\n{oops\n')
    with pytest.raises(BadRequest, match=r"bad\.json: not a readable JSON file"):
        parse_document("bad.json", b"{oops")


@pytest.mark.parametrize(("name", "hint"), [("sheet.xlsx", "export it as .csv"),
                                            ("old.doc", "save it as .docx"),
                                            ("photo.png", "")])
def test_unsupported_types_are_a_415_naming_the_supported_ones(name: str, hint: str) -> None:
    with pytest.raises(UnsupportedType) as caught:
        parse_document(name, b"\x00\x01")
    assert caught.value.status_code == 415
    assert caught.value.message.startswith(f"{name}: unsupported file type")
    assert hint in caught.value.message
    assert ".pdf, .docx, .html" in caught.value.message


def test_byte_limit_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge, match=r"big\.txt: 11 bytes is more than the limit of 10"):
        parse_document("big.txt", b"hello world", Limits(max_bytes=10))


@pytest.mark.parametrize("data", [b"", b"  \n\t"])
def test_empty_files(data: bytes) -> None:
    with pytest.raises(MamiError, match=r"e\.md: the file is empty"):
        parse_document("e.md", data)


def test_a_server_without_the_parser_says_what_to_install() -> None:
    """The Lambda zip has no PDF parser: a PDF is a 415 naming the package to install."""
    import subprocess
    import sys
    from pathlib import Path

    script = ("import sys; sys.modules['pypdf'] = None\n"
              "from core.formats import parse_document\n"
              "from tests.document_files import make_pdf\n"
              "try:\n    parse_document('a.pdf', make_pdf(['text']))\n"
              "except Exception as exc:\n    print(exc.status_code, exc.message)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == ("415 PDF files are not read by this server: it needs pypdf "
                                   "(pip install 'mami[documents]')")
