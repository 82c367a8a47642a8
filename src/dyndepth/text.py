"""Text as it is generated: incremental detokenisation and stop strings.

``TextStream`` turns committed token ids into text deltas one token at a time, the way vLLM and TGI do:

    window  = ids[prefix:]                      # a few tokens of left context + the unread tokens
    before  = decode(ids[prefix:read])          # what the window decoded to last time
    now     = decode(window)
    if now is longer than before and does not end in U+FFFD:   # U+FFFD: a multi-byte character cut short
        delta = now[len(before):]; prefix, read = read, len(ids)

so a character split over several byte-level tokens (emoji, CJK, accents) is emitted whole, once its last token
is in, and decoding costs O(window) per token instead of re-decoding everything. Special tokens are skipped,
as ``tokenizer.decode(ids, skip_special_tokens=True)`` does.

Stop strings: the text is searched as it grows. Generation ends at the first token that completes a stop string;
the text is cut at the earliest occurrence of any stop string (where ``str.find`` finds it) and the stop string
itself is not part of the text (OpenAI's ``stop``). Until a stop string is ruled out, text that could be its
beginning is held back, so a streamed client never sees text that is later cut. The tokens are kept up to and
including the one that completed the stop string (as transformers' ``StopStringCriteria`` does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TextChunk:
    """What one step commits for one row: its token ids and the text they add (possibly "" while a character or a
    possible stop string is incomplete). ``row``: the prompt's index in a batch call (0 for a single prompt)."""

    token_ids: list[int]
    text: str | None
    row: int = 0


class TextStream:
    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # tokens already turned into text
        self.text = ""  # all text decoded so far (stop strings not yet cut)
        self.sent = 0  # characters of ``text`` handed out
        self.stopped = False
        self.cut: int | None = None  # where the stop string starts in ``text``

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, token: int) -> bool:
        """Add one token; True when it completed a stop string (the generation must end here)."""
        self.ids.append(int(token))
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if len(now) > len(before) and not now.endswith("\ufffd"):
            grown = len(self.text)
            self.text += now[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            if self.stop:
                self._find_stop(grown)
        return self.stopped

    def _find_stop(self, grown: int) -> None:
        longest = max(len(s) for s in self.stop)
        start = max(0, grown - longest + 1)  # a new match must end in the new text
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.cut = min(hits)
            self.stopped = True

    def _safe_end(self) -> int:
        """End of the text that can be handed out now: all of it, less a tail that may begin a stop string."""
        if self.cut is not None:
            return self.cut
        end = len(self.text)
        for s in self.stop:
            for k in range(min(len(s) - 1, end), 0, -1):  # longest suffix of text that is a prefix of s
                if self.text.endswith(s[:k]):
                    end = min(end, len(self.text) - k)
                    break
        return end

    def take(self, final: bool = False) -> str:
        """The text not yet handed out that is safe to show; ``final`` flushes what was held back (and any
        incomplete character the tokenizer renders as U+FFFD) at the end of the generation."""
        if final and self.cut is None:
            tail = self._decode(self.ids[self.prefix:])
            if len(tail) > len(self._decode(self.ids[self.prefix:self.read])):
                self.text += tail[len(self._decode(self.ids[self.prefix:self.read])):]
                self.prefix = self.read = len(self.ids)
            end = len(self.text)
        else:
            end = self._safe_end()
        out = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return out

    @property
    def final_text(self) -> str:
        """The whole text, cut before the stop string if one was found."""
        return self.text if self.cut is None else self.text[:self.cut]
