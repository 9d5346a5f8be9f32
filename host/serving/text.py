"""`CompletionText`: a completion's text as its tokens arrive, cut at the first stop string."""

from __future__ import annotations

from collections.abc import Sequence

from models import Tokenizer
from models.tokenizer import IncrementalDecoder

__all__ = ["CompletionText"]


class CompletionText:
    """Text released piece by piece, so that the pieces joined are the completion's text.

    Contract: with no stop strings, the pieces of `push` for every token plus `finish()`
    join to `tokenizer.decode(tokens)`. With stop strings, they join to that text cut just
    before the first occurrence of any stop string, and `stopped` turns True on the token that
    completes it (generation should end there). Text that could be the start of a stop
    string is held back until it is known not to be one; a piece may therefore be "".
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        if any(not s for s in stop):
            raise ValueError("stop strings must not be empty")
        self._decoder = IncrementalDecoder(tokenizer)
        self._stop = tuple(stop)
        self._text = ""  # whole characters decoded so far
        self._released = 0  # characters of _text handed out
        self.stopped = False

    @property
    def tokens(self) -> list[int]:
        return self._decoder.tokens

    @property
    def text(self) -> str:
        """Everything released so far."""
        return self._text[: self._released]

    def push(self, token: int) -> str:
        """Add one generated token; return the text it releases (maybe "")."""
        if self.stopped:
            raise RuntimeError("push after a stop string ended the completion")
        self._text += self._decoder.push(token)
        return self._release(final=False)

    def finish(self) -> str:
        """The text still held back (a partial stop string, an incomplete UTF-8 tail)."""
        if not self.stopped:
            full = self._decoder.tokenizer.decode(self._decoder.tokens)
            self._text += full[self._decoder.emitted :]
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        end = len(self._text)
        if self._stop:
            # A stop string may straddle the released text and the new text.
            start = max(0, self._released - max(len(s) for s in self._stop) + 1)
            hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                end = min(hits)
                self.stopped = True
                self._text = self._text[:end]
            elif not final:
                end -= self._held_back()
        piece = self._text[self._released : max(end, self._released)]
        self._released += len(piece)
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._text)), longest, -1):
                if self._text.endswith(s[:k]):
                    longest = k
                    break
        return longest
