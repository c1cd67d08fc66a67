"""openai-llm against a real ``llama_cpp.server`` and a stand-in that misbehaves."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.chat import ChatRequest, Finished, start_turn
from core.config import config_from_dict
from core.errors import ProviderError, StreamInterrupted
from core.protocols import ChatMessage, GenerationParams, Principal
from core.runtime import Runtime
from plugins.local_llm import LocalLLM
from plugins.local_llm import Settings as LocalSettings
from plugins.openai_llm import OpenAICompatible, Settings, estimate_tokens, sse_data
from tests.chat_support import OPENAI, SMOLLM, LlamaServer, StandIn
from tests.conftest import free_port

FAST = GenerationParams(max_tokens=8, temperature=0.0)
HI = [ChatMessage("user", "Say hi.")]
GUARD = 20.0  # no test may hang: every call below must end well before this


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LlamaServer]:
    server = LlamaServer().wait()
    yield server
    server.stop()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn().start()
    yield server
    server.stop()


def provider_for(url: str, **overrides: Any) -> OpenAICompatible:
    """A provider whose limits let an answering stand-in in on a loaded machine (a
    timed-out request is sent again, and the tests count requests); a test about
    timeouts sets its own."""
    values: dict[str, Any] = dict(base_url=url, model="smollm2", connect_timeout=5.0,
                                  read_timeout=10.0, attempts=3, retry_budget=30.0)
    values.update(overrides)
    return OpenAICompatible(Settings(**values))


async def collect(provider: OpenAICompatible, params: GenerationParams = FAST) -> list[str]:
    async def run() -> list[str]:
        return [d.text async for d in provider.stream(HI, params)]

    try:
        return await asyncio.wait_for(run(), GUARD)
    finally:
        await provider.aclose()


async def test_streams_from_a_real_llama_cpp_server(llama_server: LlamaServer) -> None:
    provider = provider_for(llama_server.url, read_timeout=60.0)
    finishes = []

    async def run() -> str:
        text = ""
        async for delta in provider.stream(HI, FAST):
            text += delta.text
            finishes.append(delta.finish_reason)
        return text

    try:
        text = await asyncio.wait_for(run(), 60)
    finally:
        await provider.aclose()
    assert text.strip()
    assert finishes[-1] in ("stop", "length") and set(finishes[:-1]) <= {None}


async def test_a_chat_turn_through_the_pipeline_with_a_real_server(
    llama_server: LlamaServer, make_config: Any
) -> None:
    config = make_config(plugins={"openai-llm": {"base_url": llama_server.url,
                                                 "model": "smollm2", "read_timeout": 60.0}})
    runtime = Runtime(config, [OPENAI])
    await runtime.ensure_started()
    try:
        turn = await start_turn(runtime, Principal("alice"), ChatRequest("Hello!", params=FAST))
        items = [item async for item in turn.run()]
    finally:
        await runtime.stop()
    finished = items[-1]
    assert isinstance(finished, Finished) and finished.status == "complete"
    assert finished.text == "".join(i for i in items[:-1] if isinstance(i, str)) != ""


async def test_a_cut_stream_raises_interrupted_with_the_partial_text(standin: StandIn) -> None:
    standin.mode = "cut"
    with pytest.raises(StreamInterrupted) as err:
        await collect(provider_for(standin.url))
    assert err.value.partial == "Hello from"
    assert len(standin.requests) == 1  # no retry after the first token


async def test_a_stream_that_ends_without_finishing_is_interrupted(standin: StandIn) -> None:
    standin.mode = "end_early"
    with pytest.raises(StreamInterrupted) as err:
        await collect(provider_for(standin.url))
    assert err.value.partial == "Hello from" and "without finishing" in err.value.message


async def test_server_errors_are_retried_then_reported(standin: StandIn) -> None:
    standin.mode = "status500"
    with pytest.raises(ProviderError) as err:
        await collect(provider_for(standin.url, attempts=3))
    assert "stand-in says 500" in err.value.message and err.value.status_code == 502
    assert not isinstance(err.value, StreamInterrupted)
    assert len(standin.requests) == 3


async def test_client_errors_are_not_retried(standin: StandIn) -> None:
    standin.mode = "status400"
    with pytest.raises(ProviderError) as err:
        await collect(provider_for(standin.url, attempts=3))
    assert "stand-in says 400" in err.value.message
    assert len(standin.requests) == 1


async def test_a_transient_fault_before_the_first_token_is_retried(standin: StandIn) -> None:
    standin.mode, standin.failures = "flaky", 2
    assert "".join(await collect(provider_for(standin.url, attempts=3))) == (
        "Hello from the stand-in.")
    assert len(standin.requests) == 3


async def test_a_server_that_stalls_before_answering_times_out(standin: StandIn) -> None:
    standin.mode = "stall_first"
    with pytest.raises(ProviderError) as err:
        await collect(provider_for(standin.url, read_timeout=0.3, attempts=2))
    assert not isinstance(err.value, StreamInterrupted)
    assert "no answer" in err.value.message
    assert len(standin.requests) == 2


async def test_the_retry_budget_is_a_hard_bound_on_the_attempt_in_flight(
    standin: StandIn
) -> None:
    # One attempt could wait read_timeout (10 s) for its first byte; the budget (0.5 s)
    # abandons it instead of letting it run out, and no further attempt starts.
    standin.mode = "stall_first"
    with pytest.raises(ProviderError) as err:
        await collect(provider_for(standin.url, read_timeout=10.0, attempts=3,
                                   retry_budget=0.5))
    assert "retry_budget" in err.value.message and not isinstance(err.value, StreamInterrupted)
    assert len(standin.requests) == 1


async def test_usage_is_the_servers_own_when_it_reports_it(standin: StandIn) -> None:
    deltas = []
    provider = provider_for(standin.url)
    try:
        deltas = [d async for d in provider.stream(HI, FAST)]
    finally:
        await provider.aclose()
    assert standin.requests[0][1]["stream_options"] == {"include_usage": True}
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == standin.usage
    quiet = provider_for(standin.url, stream_usage=False)
    assert "stream_options" not in quiet._body(HI, FAST)


async def test_a_stream_that_stalls_midway_is_interrupted(standin: StandIn) -> None:
    standin.mode = "stall_mid"
    with pytest.raises(StreamInterrupted) as err:
        await collect(provider_for(standin.url, read_timeout=0.3))
    assert err.value.partial == "Hello"
    assert len(standin.requests) == 1


async def test_an_unreachable_server_is_a_clear_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ProviderError) as err:
        await collect(provider_for(url, attempts=2))
    assert "cannot reach" in err.value.message and url in err.value.message


async def test_the_api_key_comes_from_the_environment_and_is_redacted(
    standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAMI_TEST_LLM_KEY", "sk-secret-123")
    config = config_from_dict({
        "core": {"database_url": "sqlite://", "auth": False},
        "plugins": {"openai-llm": {"base_url": standin.url, "model": "m",
                                   "api_key": {"env": "MAMI_TEST_LLM_KEY"}}},
    })
    runtime = Runtime(config, [OPENAI])
    runtime.register_providers()
    provider = runtime.require("llm")
    await collect(provider)
    assert standin.requests[0][0]["authorization"] == "Bearer sk-secret-123"
    assert standin.requests[0][1]["model"] == "m" and standin.requests[0][1]["stream"] is True
    assert config.redacted()["plugins"]["openai-llm"]["api_key"] == "***"
    assert "sk-secret-123" not in str(config.redacted())
    await runtime.db.close()


async def test_sse_events_are_parsed_as_they_complete() -> None:
    async def lines() -> AsyncIterator[str]:
        for line in [": comment", "event: x", "data: {\"a\":", "data: 1}", "", "data:[DONE]",
                     "", "id: 5", "data: tail"]:
            yield line

    assert [d async for d in sse_data(lines())] == ['{"a":\n1}', "[DONE]", "tail"]


def test_the_estimate_never_undercounts_ordinary_text() -> None:
    local = LocalLLM(SMOLLM, LocalSettings(n_ctx=512))
    asyncio.run(local.load())  # the real tokenizer, in the model process
    samples = [
        "The quick brown fox jumps over the lazy dog. " * 5,
        "def f(x: int) -> int:\n    return x ** 2 + 3 * x - 7  # comment\n",
        "Numbers: 3.14159, 2.71828, 1234567890, 0xdeadbeef, 1e-9.",
        "Çok güzel bir gün; ağaçlar yeşil, gökyüzü mavi. Привет, как дела?",
        "https://example.com/path?query=1&other=two#fragment",
        "日本語のテキストです。漢字とひらがな。 emoji 😀🎉",
        "1234567890" * 4,
        "",
    ]
    words = " ".join(p.read_text() for p in Path("core").glob("*.py")).split()
    chooser = random.Random(7)
    samples += [" ".join(chooser.choice(words) for _ in range(chooser.randint(1, 80)))
                for _ in range(300)]
    try:
        for text in samples:
            assert estimate_tokens(text) >= local.count_tokens(text), text
        assert estimate_tokens("The quick brown fox.") < 3 * local.count_tokens(
            "The quick brown fox.")
    finally:
        asyncio.run(local.aclose())


def test_a_tokenizer_json_gives_exact_counts(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2},
                                           unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    provider = OpenAICompatible(Settings(tokenizer_path=str(path)))
    assert provider.count_tokens("hello world hello unknown words") == 5
    assert OpenAICompatible(Settings()).count_tokens("hello world") == estimate_tokens(
        "hello world")


def test_registering_the_provider_imports_no_http_client() -> None:
    code = (
        "import sys\n"
        "from core.config import config_from_dict\n"
        "from core.runtime import Runtime\n"
        "from core.plugins import builtin_candidates\n"
        "c = [x for x in builtin_candidates() if x.name == 'openai-llm']\n"
        "cfg = {'core': {'database_url': 'sqlite://'},\n"
        "       'plugins': {'openai-llm': {'enabled': True}}}\n"
        "rt = Runtime(config_from_dict(cfg), c)\n"
        "rt.register_providers()\n"
        "print(rt.llm.name, sorted(m for m in ('httpx', 'stamina', 'tokenizers')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[3])
    assert out.stdout.strip() == "default []"
