"""Cleaning decoded model text for clients, and reading answers word by word."""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"[ \t]+")


def clean_text(text: str) -> str:
    """Drops control characters and undecodable-byte marks, collapses runs of spaces, strips the ends.

    Byte-level BPE can end a generation in the middle of a UTF-8 sequence, which decodes to U+FFFD; a client should
    not see that, nor stray control bytes.
    """
    kept = []
    for ch in text:
        if ch == "\ufffd":
            continue
        if ch in "\n\t":
            kept.append(ch)
            continue
        if unicodedata.category(ch) in {"Cc", "Cf", "Cs", "Co", "Cn"}:
            continue
        kept.append(ch)
    lines = [_SPACES.sub(" ", line).strip() for line in "".join(kept).splitlines()]
    return "\n".join(line for line in lines if line).strip()


_ARTICLES = frozenset({"a", "an", "the"})


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, articles dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(word for word in text.split() if word not in _ARTICLES)
