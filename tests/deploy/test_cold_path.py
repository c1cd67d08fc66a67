"""What a cold start pays for: the schema check of every start works without importing
Alembic (and the revision files' head it reads agrees with Alembic's), and neither a
Lambda cold start nor `mami serve` starting imports a heavy module that only some later
request needs (document parsers, the embedded vector store, local models, MCP, ...)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory

from core import migrations
from tests.conftest import free_port
from tests.deploy.lambda_events import HANDLER_PATH

ROOT = Path(__file__).resolve().parents[2]
# Imported only by the requests that need them (an upload, a local model, a tool call,
# an embedded vector store, a Forge server), never by a start: each costs tens to
# hundreds of milliseconds of every cold start.
HEAVY = ("chromadb", "onnxruntime", "numpy", "llama_cpp", "PIL", "pypdf", "docx", "trafilatura",
         "mcp", "openai", "httpx", "boto3", "alembic")
REVISION = '''"""{message}"""
revision: str = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


def alembic_heads(scripts: Path) -> list[str]:
    return list(ScriptDirectory.from_config(
        migrations.alembic_config("sqlite://", script_location=scripts)).get_heads())


def test_files_head_agrees_with_alembic_on_the_project() -> None:
    assert [migrations.files_head(migrations.SCRIPT_LOCATION / "versions")] == alembic_heads(
        migrations.SCRIPT_LOCATION)


def test_files_head_follows_branches_and_merges(tmp_path: Path) -> None:
    scripts = tmp_path / "alembic"
    shutil.copytree(migrations.SCRIPT_LOCATION, scripts,
                    ignore=shutil.ignore_patterns("__pycache__"))
    versions = scripts / "versions"
    head = migrations.head_revision()
    for rev, down in (("b1", head), ("b2", head)):
        (versions / f"{rev}.py").write_text(REVISION.format(message=rev, rev=rev, down=down))
    assert migrations.files_head(versions) is None  # two heads: Alembic has the last word
    assert sorted(alembic_heads(scripts)) == ["b1", "b2"]

    (versions / "m1.py").write_text(REVISION.format(message="merge", rev="m1", down=("b1", "b2")))
    assert [migrations.files_head(versions)] == alembic_heads(scripts) == ["m1"]


@pytest.mark.postgres
def test_current_revision_on_postgres(postgres_url: str) -> None:
    assert migrations.current_revision(postgres_url) is None
    migrations.upgrade_all(postgres_url)
    assert migrations.current_revision(postgres_url) == migrations.head_revision()


def test_schema_check_imports_no_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrations.upgrade_all(url)
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from core import migrations\n"
        f"assert migrations.current_revision({url!r}) == migrations.head_revision()\n"
        "print('alembic' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=False, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("servers", [{}, {"MAMI_LLM_BASE_URL": "http://127.0.0.1:9/v1",
                                          "MAMI_CHROMA_URL": "http://127.0.0.1:9"}],
                         ids=["bare", "llm-and-chroma-servers"])
def test_a_lambda_cold_start_imports_nothing_heavy(tmp_path: Path, servers: dict[str, str]
                                                   ) -> None:
    """A fresh process that answers /health (its database already migrated) has imported
    none of :data:`HEAVY`: not Alembic, not boto3 (no secret ARN is set), not chromadb
    when Chroma is a server, not httpx before a request calls the model."""
    url = f"sqlite:///{tmp_path / 'cold.db'}"
    migrations.upgrade_all(url)
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.deploy.lambda_events import make_event
        spec = importlib.util.spec_from_file_location("h", {str(HANDLER_PATH)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        response = module.handler(make_event("http-api-v2", "GET", "/health"), None)
        print(json.dumps({{"status": response["statusCode"],
                           "imported": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MAMI_DATA_DIR": str(tmp_path),
           "MAMI_DATABASE_URL": url, "MAMI__CORE__AUTH": "false", **servers}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": 200, "imported": []}


def test_mami_serve_starting_imports_nothing_heavy(tmp_path: Path) -> None:
    """`mami serve` with the default plugins (local model, embedded Chroma, memory, the
    web page), its database at head, up to its first answer: Python's own import log
    (``-X importtime``) names none of :data:`HEAVY` or their submodules."""
    url = f"sqlite:///{tmp_path / 'data' / 'mami.db'}"
    migrations.upgrade_all(url)
    port = free_port()
    env = {**os.environ, "MAMI_DATA_DIR": str(tmp_path / "data"), "MAMI_DATABASE_URL": url,
           "PYTHONPATH": str(ROOT), "MAMI_LOG_LEVEL": "INFO"}
    env.pop("MAMI_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "core.cli", "serve",
                             "--port", str(port)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    log = []
    try:
        for line in proc.stderr:
            log.append(line)
            if "Application startup complete" in line:
                break
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=30).status_code == 200
    finally:
        proc.terminate()
        log += proc.communicate(timeout=60)[1].splitlines()
    assert any("Application startup complete" in line for line in log), "".join(log[-40:])
    imported = {line.rsplit("|", 1)[1].strip() for line in log if line.startswith("import time:")}
    assert "core.app" in imported
    assert sorted(m for m in imported if m.split(".")[0] in HEAVY) == []
