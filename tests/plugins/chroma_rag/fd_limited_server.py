"""``python fd_limited_server.py PORT DATA_DIR NOFILE [CHROMA_URL]``: a mami app with
chroma-rag and the header authenticator under uvicorn, its descriptor soft limit set to
NOFILE before Chroma is opened (what a service without LimitNOFILE gets)."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

if __name__ == "__main__":
    port, data, nofile = int(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    resource.setrlimit(resource.RLIMIT_NOFILE,
                       (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    import uvicorn

    from core.app import create_app
    from core.config import config_from_dict
    from tests.plugins.chroma_rag.conftest import HEADER_AUTH, rag_candidates

    rag: dict[str, object] = {"scopes": ["default"]}
    if len(sys.argv) > 4:
        rag["chroma_url"] = sys.argv[4]
    config = config_from_dict({
        "core": {"data_dir": str(data), "auth": True, "image_worker": False,
                 "database_url": f"sqlite:///{data / 'mami.db'}"},
        "plugins": {"chroma-rag": rag},
    })
    uvicorn.run(create_app(config, candidates=rag_candidates(HEADER_AUTH)),
                host="127.0.0.1", port=port, log_level="warning")
