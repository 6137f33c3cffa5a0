"""Which part of a completion being generated may be sent already: pure Python, no torch.

A streamed piece can never be taken back, so text is held back while it could still change:
- what the newest token decoded to: the next one can rewrite it (a byte-level token split
  mid-character shows as U+FFFD until the rest arrives; tokenizers clean up the spaces before
  punctuation), as can trailing whitespace;
- the tail that could still become a stop string (the completion ends before it, unsent).
This is the incremental detokenization of TGI and vLLM in its simplest form. The pieces sent,
joined, are then a prefix of the final completion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text before the first stop string, and whether one was found (OpenAI leaves it out)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _stop_prefix_length(text: str, stop: Sequence[str]) -> int:
    """The length of the longest tail of `text` that begins some stop string."""
    longest = 0
    for word in stop:
        for size in range(min(len(word) - 1, len(text)), longest, -1):
            if word.startswith(text[-size:]):
                longest = size
                break
    return longest


def settled(whole: str, older: str, stop: Sequence[str]) -> str:
    """The part of `whole` (all tokens so far) that more tokens can no longer change.

    older: the text of all tokens but the newest.
    """
    text, stopped = cut_at_stop(whole, stop)
    if stopped:
        return text  # generation ends here
    candidate = older.rstrip().rstrip("\ufffd")
    candidate = candidate[: len(whole) - _stop_prefix_length(whole, stop)]
    return candidate if whole.startswith(candidate) else ""


class StreamedText:
    """Feeds on generated token ids and says what new text may be sent."""

    def __init__(self, decode: Callable[[list[int]], str], stop: Sequence[str], send: Callable[[str], None]) -> None:
        self.decode = decode
        self.stop = list(stop)
        self.send = send
        self.ids: list[int] = []
        self.sent = ""

    def add(self, ids: list[int]) -> None:
        self.ids.extend(ids)
        self._send_up_to(settled(self.decode(self.ids), self.decode(self.ids[:-1]), self.stop))

    def finish(self, completion: str) -> None:
        """Sends the rest of the final completion."""
        self._send_up_to(completion)

    def _send_up_to(self, text: str) -> None:
        if len(text) > len(self.sent) and text.startswith(self.sent):
            piece, self.sent = text[len(self.sent):], text
            self.send(piece)
