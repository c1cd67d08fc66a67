"""The model process: owns one llama.cpp model and context, speaks JSON lines on a pipe.

Started by :class:`plugins.local_llm.process.ModelProcess` as
``python -m plugins.local_llm.child SETTINGS_JSON``. Native code runs only here, so a
fault in it (an illegal instruction, an assert, the OOM killer) ends this process and
never the server.

Protocol, one JSON object per line; the parent sends on stdin, the child answers on the
file descriptor that was stdout (native libraries that print are sent to stderr):

- child → ``{"op": "ready", "n_ctx": int, "system_info": str}`` once the model is
  loaded, or ``{"op": "failed", "error": str}`` and exit status 3;
- ``{"op": "count", "id": n, "text": str}`` → ``{"id": n, "tokens": int}`` (answered at
  once, also while a reply is being generated);
- ``{"op": "generate", "id": n, "messages": [...], "params": {...}}`` →
  ``{"id": n, "text": str}`` per piece (and ``{"id": n, "tool_calls": [{"id", "name",
  "arguments"}]}`` when the model calls tools), then exactly one ``{"id": n, "end": reason}``
  (``reason`` is the finish reason, ``"cancelled"``, or ``{"id": n, "error": str}``);
- ``{"op": "cancel", "id": n}``: the generation stops between two tokens and sends its end;
- end of stdin: the process exits.

Generations run one after another in the main thread: two can never share the context.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from typing import Any, Protocol, TextIO

from plugins.local_llm.cpu import extra_buffers_allowed


class Sender(Protocol):
    def send(self, message: dict[str, Any]) -> None: ...


class Channel:
    """The answer side of the pipe; safe to write from several threads."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        line = json.dumps(message, ensure_ascii=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def forbid_extra_buffers(bindings: Any) -> None:
    """Make every model this process loads skip the extra buffer types. llama-cpp-python
    has no argument for ``use_extra_bufts``, so its default parameters are amended."""
    default = bindings.llama_model_default_params

    def params() -> Any:
        amended = default()
        amended.use_extra_bufts = False
        return amended

    bindings.llama_model_default_params = params


def load(settings: dict[str, Any]) -> tuple[Any, str]:
    """Load the model as ``settings`` (the plugin's settings plus ``path``) say."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    if not extra_buffers_allowed(settings["extra_buffers"], info):
        forbid_extra_buffers(bindings)
    threads = settings["n_threads"] or max(1, (os.cpu_count() or 2) // 2)
    kwargs: dict[str, Any] = {
        "n_ctx": settings["n_ctx"], "verbose": False,
        # Prompt processing gets the same thread count as generation: more threads than
        # free cores make batched prefill ten times slower.
        "n_threads": threads, "n_threads_batch": threads,
    }
    if settings["seed"] >= 0:
        kwargs["seed"] = settings["seed"]
    if settings.get("chat_format"):
        kwargs["chat_format"] = settings["chat_format"]
    return llama_cpp.Llama(model_path=settings["path"], **kwargs), info


def generate(model: Any, request: dict[str, Any], cancelled: set[int],
             channel: Sender) -> None:
    """Run one generation, sending its pieces and exactly one end. The end carries
    ``took``: seconds from the request's arrival to the first piece and to the end."""
    ident = request["id"]
    params = request["params"]
    received = request.get("received") or time.perf_counter()
    reason: str | None = "cancelled"
    first = None
    try:
        if ident not in cancelled:
            reason = None
            extra: dict[str, Any] = {}
            response_format = params.get("response_format")
            if response_format and response_format.get("type") == "json_schema":
                # llama-cpp-python's spelling of a schema-constrained JSON reply
                schema = (response_format.get("json_schema") or {}).get("schema") or {}
                response_format = {"type": "json_object", "schema": schema}
            if response_format:
                extra["response_format"] = response_format
            if params.get("tools"):
                # llama.cpp's tool-calling handler cannot stream: the reply comes whole.
                reply = model.create_chat_completion(
                    messages=request["messages"], stream=False,
                    max_tokens=params["max_tokens"], temperature=params["temperature"],
                    top_p=params["top_p"], stop=params["stop"], tools=params["tools"],
                    tool_choice=params.get("tool_choice") or "auto", **extra)
                choice = reply["choices"][0]
                message = choice["message"]
                if message.get("content"):
                    first = time.perf_counter() - received
                    channel.send({"id": ident, "text": message["content"]})
                calls = [{"id": c.get("id"), "name": c["function"]["name"],
                          "arguments": c["function"].get("arguments") or ""}
                         for c in message.get("tool_calls") or ()]
                if calls:
                    channel.send({"id": ident, "tool_calls": calls})
                reason = choice.get("finish_reason") or "stop"
                chunks: Any = ()
            else:
                chunks = model.create_chat_completion(
                    messages=request["messages"], stream=True, max_tokens=params["max_tokens"],
                    temperature=params["temperature"], top_p=params["top_p"],
                    stop=params["stop"], **extra,
                )
            for chunk in chunks:
                if ident in cancelled:
                    reason = "cancelled"
                    break
                choice = chunk["choices"][0]
                text = choice["delta"].get("content") or ""
                if text:
                    first = first or time.perf_counter() - received
                    channel.send({"id": ident, "text": text})
                reason = choice.get("finish_reason") or reason
    except Exception as exc:
        channel.send({"id": ident, "error": f"{type(exc).__name__}: {exc}"})
        return
    finally:
        cancelled.discard(ident)
    channel.send({"id": ident, "end": reason or "stop",
                  "took": [first, time.perf_counter() - received]})


def read_requests(model: Any, jobs: queue.Queue[dict[str, Any] | None],
                  cancelled: set[int], channel: Channel) -> None:
    """Read the parent's requests: counts are answered here, generations queued."""
    for line in sys.stdin:
        request = json.loads(line)
        op = request.get("op")
        if op == "count":
            tokens = model.tokenize(request["text"].encode("utf-8"), add_bos=False,
                                    special=True)
            channel.send({"id": request["id"], "tokens": len(tokens)})
        elif op == "cancel":
            cancelled.add(request["id"])
        elif op == "generate":
            request["received"] = time.perf_counter()
            jobs.put(request)
    jobs.put(None)


def main(argv: list[str]) -> int:
    channel = Channel(os.fdopen(os.dup(1), "w", encoding="utf-8"))
    os.dup2(2, 1)  # whatever native code prints must not corrupt the protocol
    settings = json.loads(argv[1])
    try:
        model, info = load(settings)
    except Exception as exc:
        channel.send({"op": "failed", "error": f"{type(exc).__name__}: {exc}"})
        return 3
    channel.send({"op": "ready", "n_ctx": int(model.n_ctx()), "system_info": info})
    jobs: queue.Queue[dict[str, Any] | None] = queue.Queue()
    cancelled: set[int] = set()
    threading.Thread(target=read_requests, args=(model, jobs, cancelled, channel),
                     daemon=True).start()
    while (request := jobs.get()) is not None:
        generate(model, request, cancelled, channel)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
