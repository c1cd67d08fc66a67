"""What every benchmark shares: print a line and keep it, percentiles, save the lines."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
LINES: list[str] = []


def say(line: str = "") -> None:
    """Print ``line`` now and keep it for :func:`save`."""
    print(line, flush=True)
    LINES.append(line)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def save(name: str) -> Path:
    """Write every line said so far to ``bench/results/<name>.txt``."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}.txt"
    out.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return out
