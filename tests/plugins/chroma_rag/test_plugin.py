"""Registration is cheap: no heavy module is imported until a document or query needs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ["chromadb", "numpy", "onnxruntime", "tokenizers", "PIL", "llama_cpp",
         "pypdf", "docx", "trafilatura", "lxml"]

SCRIPT = """
import json, sys
from core.config import config_from_dict
from core.plugins import builtin_candidates
from core.runtime import Runtime
config = config_from_dict({"core": {"data_dir": sys.argv[1]}})
heavy = json.loads(sys.argv[2])
runtime = Runtime(config, [c for c in builtin_candidates() if c.name == "chroma-rag"])
runtime.register_providers()
import core.app, core.api.documents, core.commands.ingest  # the upload paths, unused yet
assert runtime.retriever is not None and runtime.retriever.name == "chroma-rag"
print(json.dumps([m for m in heavy if m in sys.modules]))
"""


def test_registering_the_retriever_imports_nothing_heavy(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(HEAVY)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3], check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
