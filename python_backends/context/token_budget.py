"""Token counting for context replacement with the edge model's own tokenizer (the `tokenizers` library, no torch)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


class TokenizerBudget:
    """Counts and cuts text in the SVLM's tokens, so the LVLM answer fits the history budget the model sees."""

    def __init__(self, tokenizer, cache_size: int = 4096) -> None:
        self.tokenizer = tokenizer
        # Every frame counts its question and each history turn again, and a turn stays in the history for several
        # frames: remembered counts save an encode (about 25 us each) per repeated text on the hot path.
        self.count = lru_cache(maxsize=cache_size)(self._count)

    @classmethod
    def from_file(cls, path: str | Path) -> TokenizerBudget:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= max_tokens:
            return text
        # Cut at the end of the last whole token that fits, in characters of the original text.
        end = encoding.offsets[max_tokens - 1][1]
        return text[:end].rstrip()
