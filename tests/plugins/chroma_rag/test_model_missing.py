"""The embedding model missing (a fresh HOME, no download possible): an upload is a 503
whose message names no server path and no network error, ``/health`` marks retrieval
and memory ``degraded`` with the exact fix, and the details go to the log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
import json, sys
from litestar.testing import TestClient
from core.app import create_app
from core.config import config_from_dict
from core.plugins import builtin_candidates
config = config_from_dict({"core": {"data_dir": sys.argv[1], "auth": False}})
wanted = ("chroma-rag", "memory")
app = create_app(config, candidates=[c for c in builtin_candidates() if c.name in wanted])
with TestClient(app, base_url="http://127.0.0.1") as client:
    upload = client.post("/api/documents",
                         files=[("file", ("notes.md", b"Lisbon at nine.", "text/markdown"))])
    again = client.post("/api/documents", json={"source": "b.md", "text": "x"})
    print(json.dumps({"upload": [upload.status_code, upload.json()],
                      "again": again.status_code, "health": client.get("/health").json()}))
"""


def test_missing_embedding_model_is_degraded_with_its_fix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"  # the download fails here, with or without internet
    env = {**os.environ, "HOME": str(home), "HTTPS_PROXY": dead, "HTTP_PROXY": dead,
           "https_proxy": dead, "http_proxy": dead, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "data")], env=env,
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    status, body = report["upload"]
    assert status == 503 and body["error"]["code"] == "embedding_model_missing"
    message = body["error"]["message"]
    assert "embedding model is not installed" in message and "mami doctor" in message
    for leak in (str(home), "/", "Errno", "Error", "127.0.0.1"):
        assert leak not in message.replace("/health", ""), leak
    assert report["again"] == 503
    model_dir = home / ".cache" / "chroma" / "onnx_models" / "all-MiniLM-L6-v2" / "onnx"
    health = report["health"]
    assert health["status"] == "degraded"
    for plugin in ("chroma-rag", "memory"):
        entry = health["plugins"][plugin]
        assert entry["status"] == "degraded", entry
        assert "model.onnx" in entry["error"] and "fix: copy the files" in entry["error"]
        assert str(model_dir) in entry["error"]
    assert f"embedding model missing in {model_dir} and the download failed" in done.stderr
