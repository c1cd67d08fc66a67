"""The web-ui plugin without a browser: what it serves, with which headers, and that its
files ship in the package and fetch nothing from elsewhere."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.app import create_app
from plugins.web_ui.routes import ASSETS, STATIC, VENDOR

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def serve(make_config: Any, live_server: Any) -> Any:
    def start(**tables: Any) -> Any:
        return live_server(create_app(make_config(**tables)))

    return start


def test_the_page_and_its_files_need_no_credential(serve: Any) -> None:
    server = serve(core={"auth": True})
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    referenced = re.findall(r'(?:src|href)="/ui/([^"]+)"', page.text)
    assert sorted(referenced) == sorted(ASSETS)
    for name, media_type in ASSETS.items():
        response = httpx.get(f"{server.url}/ui/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == media_type
        assert response.content == (STATIC / name).read_bytes()
    assert httpx.get(f"{server.url}/api/conversations").status_code == 401


def test_every_response_allows_only_this_origin(serve: Any) -> None:
    server = serve()
    for path in ("/", "/ui/app.js", "/ui/app.css", "/favicon.ico"):
        headers = httpx.get(f"{server.url}{path}").headers
        policy = dict(part.strip().split(" ", 1) for part in
                      headers["content-security-policy"].split(";"))
        assert policy["default-src"] == "'self'"
        assert policy["script-src"] == policy["style-src"] == policy["connect-src"] == "'self'"
        assert policy["img-src"] == "'self' blob:"
        assert policy["frame-ancestors"] == policy["object-src"] == "'none'"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


def test_unknown_files_are_404_with_a_message(serve: Any) -> None:
    server = serve()
    for path in ("/ui/index.html.bak", "/ui/routes.py", "/ui/..%2F__init__.py", "/ui/"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"


def test_the_title_setting_is_escaped(serve: Any) -> None:
    server = serve(plugins={"web-ui": {"title": "<b>Ayşe's</b> mami"}})
    text = httpx.get(f"{server.url}/").text
    assert "<title>&lt;b&gt;Ayşe&#x27;s&lt;/b&gt; mami</title>" in text
    assert "<b>" not in text


def test_switched_off_there_is_no_page(serve: Any) -> None:
    server = serve(plugins={"web-ui": {"enabled": False}})
    assert httpx.get(f"{server.url}/").status_code == 404
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_the_files_reference_no_other_host() -> None:
    for path in STATIC.iterdir():
        if path.is_dir():
            continue
        text = path.read_text(encoding="utf-8")
        external = [u for u in re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"'`)]*", text)
                    if "www.w3.org/2000/svg" not in u]
        assert external == [], (path.name, external)
        assert "<script>" not in text and " style=" not in text, path.name


def test_the_files_ship_in_the_wheel(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("core", "plugins"):
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("mami-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    files = [p for p in STATIC.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.name.endswith(".LICENSE.txt") for p in files)
    for path in files:
        assert f"plugins/web_ui/static/{path.relative_to(STATIC).as_posix()}" in names


def test_vendored_libraries_are_the_pinned_files_and_import_nothing_remote() -> None:
    """Every vendored script is listed in vendor/README.md with its SHA-256 and matches
    it; none imports from another host."""
    import hashlib

    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    pinned = dict((name, digest) for digest, name in
                  re.findall(r"^\s+([0-9a-f]{64})  (\S+)$", readme, flags=re.MULTILINE))
    scripts = sorted(p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*.js"))
    assert sorted(pinned) == scripts
    for name in scripts:
        data = (VENDOR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == pinned[name], name
        remote = re.findall(rb"""(?:import|from)\s*\(?\s*["'](?:https?:)?//[^"']*""", data)
        assert remote == [], (name, remote)
    for licence in ("marked", "dompurify", "highlight"):
        assert (VENDOR / f"{licence}.LICENSE.txt").stat().st_size > 500


def test_vendored_scripts_are_served_and_nothing_else(serve: Any) -> None:
    server = serve()
    ok = httpx.get(f"{server.url}/ui/vendor/hljs/python.min.js")
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("text/javascript")
    assert ok.content == (VENDOR / "hljs" / "python.min.js").read_bytes()
    for path in ("/ui/vendor/README.md", "/ui/vendor/marked.LICENSE.txt",
                 "/ui/vendor/%2e%2e/routes.py", "/ui/vendor/nope.js"):
        response = httpx.get(f"{server.url}{path}")
        assert response.status_code == 404, path
