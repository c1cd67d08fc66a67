"""Registers an LLM under a name another plugin (subset) already uses."""

from __future__ import annotations

from typing import Any

from core import hookimpl
from mami_contract.subset import Parrot


@hookimpl
def register_llm_providers(register: Any) -> None:
    register(Parrot())
