# ruff: noqa: RUF001, RUF002  (Turkish letters and typographic quotes are intended)
"""Text normalisation for exact-duplicate detection and deterministic memory ids."""

from __future__ import annotations

import hashlib
import re
import unicodedata

__all__ = ["clean", "memory_id", "normalize"]

# Every form of Turkish i folds to plain "i": str.lower() turns "İ" into "i" plus a
# combining dot, and users often type Turkish without its letters ("hatirla", "ISTANBUL").
_I_FOLD = str.maketrans({"İ": "i", "I": "i", "ı": "i"})
_APOSTROPHES = str.maketrans({"'": None, "’": None, "ʼ": None, "‘": None, "`": None})
_SPACE = re.compile(r"\s+")


def clean(text: str) -> str:
    """``text`` in NFKC with runs of whitespace collapsed to one space and trimmed: the
    wording that is stored and shown."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def normalize(text: str) -> str:
    """The key two texts share when they say the same thing in the same words.

    NFKC, Turkish-aware case folding (I, ı, İ and i are one letter), apostrophes
    dropped ("İstanbul'da" = "istanbulda"), other punctuation and symbols turned into
    spaces, whitespace collapsed. Letters with other diacritics (ş, ğ, ü, ö, ç) stay.
    """
    folded = unicodedata.normalize("NFKC", text).translate(_I_FOLD).casefold()
    folded = unicodedata.normalize("NFC", folded).translate(_APOSTROPHES)
    kept = "".join(
        " " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in folded
    )
    return _SPACE.sub(" ", kept).strip()


def memory_id(owner: str, normalized: str) -> str:
    """Deterministic id of an owner's memory: the same owner and normalised text always
    give the same id, so a repeated write cannot make a second row."""
    return hashlib.sha256(f"{owner}\x1f{normalized}".encode()).hexdigest()[:32]
