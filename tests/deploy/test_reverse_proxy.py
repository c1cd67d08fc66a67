"""deploy/server/nginx.conf in front of mami under uvicorn, with a real nginx on
loopback: TLS, the redirect, WebSocket chat and streamed replies that arrive before
the reply is finished (proxy buffering off). Only ports and certificate paths of the
shipped file are changed."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from core import hookimpl
from core.app import create_app
from core.protocols import ChatMessage, Delta, GenerationParams
from tests.chat_support import plugin_object
from tests.conftest import free_port

SITE = Path(__file__).resolve().parents[2] / "deploy" / "server" / "nginx.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)

pytestmark = pytest.mark.skipif(NGINX is None or shutil.which("openssl") is None,
                                reason="needs nginx and openssl (.ci/apt-packages)")


class GatedModel:
    """Says "first ", then waits for the test to release it, then says "second"."""

    name = "gated"
    context_window = 4096

    def __init__(self) -> None:
        self.release = threading.Event()

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    async def stream(self, messages: Sequence[ChatMessage],
                     params: GenerationParams) -> AsyncIterator[Delta]:
        yield Delta("first ")
        await asyncio.to_thread(self.release.wait, 30)
        yield Delta("second", "stop")

    async def aclose(self) -> None:
        pass


@dataclass
class GatedPlugin:
    model: GatedModel

    @hookimpl
    def register_llm_providers(self, register: Any, runtime: Any) -> None:
        register(self.model)


@dataclass
class Proxy:
    http_url: str
    https_url: str
    wss_url: str
    model: GatedModel
    check_output: str


def _site_for_test(app_port: int, http_port: int, https_port: int, folder: Path) -> str:
    text = SITE.read_text()
    replacements = {
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{app_port};",
        "    listen 80;\n": f"    listen 127.0.0.1:{http_port};\n",
        "    listen [::]:80;\n": "",
        "    listen 443 ssl http2;\n": f"    listen 127.0.0.1:{https_port} ssl http2;\n",
        "    listen [::]:443 ssl http2;\n": "",
        "/etc/letsencrypt/live/chat.example.com/fullchain.pem": str(folder / "cert.pem"),
        "/etc/letsencrypt/live/chat.example.com/privkey.pem": str(folder / "key.pem"),
    }
    for old, new in replacements.items():
        assert text.count(old) == 1, f"nginx.conf changed: {old!r}"
        text = text.replace(old, new)
    return text


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("nginx exited")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("nginx did not listen")


@pytest.fixture
def proxy(make_config: Any, live_server: Any, tmp_path: Path) -> Iterator[Proxy]:
    model = GatedModel()
    app = create_app(make_config(), candidates=[plugin_object("gated", GatedPlugin(model))])
    server = live_server(app)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "key.pem"),
                    "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    http_port, https_port = free_port(), free_port()
    site = tmp_path / "mami-site.conf"
    site.write_text(_site_for_test(server.port, http_port, https_port, tmp_path))
    main = tmp_path / "nginx.conf"
    temp = "".join(f" {kind}_temp_path {tmp_path / kind};"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main.write_text(
        f"user root; worker_processes 1; daemon off; pid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'} warn;\nevents {{ worker_connections 64; }}\n"
        f"http {{ access_log off;{temp} include {site}; }}\n"
    )
    check = subprocess.run([str(NGINX), "-t", "-p", str(tmp_path), "-c", str(main)],
                           capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen([str(NGINX), "-p", str(tmp_path), "-c", str(main)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(https_port, process)
        yield Proxy(f"http://127.0.0.1:{http_port}", f"https://127.0.0.1:{https_port}",
                    f"wss://127.0.0.1:{https_port}", model, check.stderr)
    finally:
        model.release.set()
        process.terminate()
        process.wait(timeout=30)


def test_config_is_valid_and_plain_http_redirects(proxy: Proxy) -> None:
    assert "syntax is ok" in proxy.check_output
    response = httpx.get(proxy.http_url + "/health", headers={"host": "chat.example.com"})
    assert response.status_code == 301
    assert response.headers["location"] == "https://chat.example.com/health"


def test_health_over_tls(proxy: Proxy) -> None:
    response = httpx.get(proxy.https_url + "/health", verify=False)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_streamed_reply_arrives_before_it_is_finished(proxy: Proxy) -> None:
    """The model holds "second" back until the client has seen "first ": a buffering
    proxy would hold "first " back too, and the read would time out."""
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    texts: list[str] = []
    with httpx.Client(verify=False, timeout=httpx.Timeout(15.0)) as client, \
            client.stream("POST", proxy.https_url + "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = reply.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                text = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if text:
                    texts.append(text)
                    break
        proxy.model.release.set()
        rest = [line for line in lines if line.startswith("data: ")]
    for line in rest[:-1]:
        choice = json.loads(line[6:])["choices"][0]
        texts.append(choice["delta"].get("content") or "")
    assert "".join(texts) == "first second"
    assert rest[-1] == "data: [DONE]"


async def test_websocket_chat_through_the_proxy(proxy: Proxy) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    async with websockets.connect(proxy.wss_url + "/ws/chat", ssl=context,
                                  open_timeout=15) as socket_:
        await socket_.send(json.dumps({"type": "message", "content": "hello"}))
        events = [json.loads(await asyncio.wait_for(socket_.recv(), 15)) for _ in range(2)]
        assert [e["type"] for e in events] == ["start", "delta"]
        assert events[1]["text"] == "first "
        proxy.model.release.set()
        while (event := json.loads(await asyncio.wait_for(socket_.recv(), 15)))["type"] != "end":
            assert event == {"type": "delta", "text": "second"}
        assert event["status"] == "complete"
