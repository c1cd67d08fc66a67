"""The schema check of every (cold) start works without importing Alembic, and the
revision files' head it reads agrees with Alembic's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from core import migrations

ROOT = Path(__file__).resolve().parents[2]
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
