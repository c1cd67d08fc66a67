"""Docs for every setting: each core key is in the README, each built-in plugin's
setting in the shipped plugins.toml."""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from core.config import BudgetSettings, CoreSettings, ServerSettings
from plugins import BUILTINS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("table", [CoreSettings, ServerSettings, BudgetSettings])
def test_core_settings_are_documented_in_the_readme(table: type) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(table) if f"`{f.name}`" not in readme]
    assert missing == []


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_plugin_settings_are_documented_in_plugins_toml(name: str) -> None:
    shipped = (ROOT / "plugins.toml").read_text(encoding="utf-8")
    table = re.search(rf"^#? ?\[plugins\.{re.escape(name)}\]\n(.*?)(?=\n\n|\Z)", shipped,
                      flags=re.S | re.M)
    assert table, f"plugins.toml has no [plugins.{name}] table"
    settings = getattr(importlib.import_module(BUILTINS[name][0]), "Settings", None)
    fields = [f.name for f in dataclasses.fields(settings)] if settings else []
    missing = [f for f in fields if not re.search(rf"^#? ?{f} =", table.group(1), flags=re.M)]
    assert missing == []
