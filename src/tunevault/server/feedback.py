"""Feedback on a job's answers: its texts sealed for the store, and the preference pairs made from it.

A clinician rates an answer of a job's adapter (good or bad), writes a better one, or both
(RecordFeedback). The texts are private data: they are sealed with the job's data key in the
sealed file format (privacy/sealing/encryption.py) and only the blob reaches SQLite, so DeleteJob's
crypto-shredding of that key makes every copy unreadable. ExportFeedback pairs the entries into
OpenAI DPO rows (contract/preference_rows.py), uploaded as any preference dataset is.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import dataclass

from tunevault.server.privacy.sealing.encryption import DecryptionError, KeyLookup, SealedReader, SealedWriter
from tunevault.server.privacy.sealing.keys import DataKey
from tunevault.server.store import FeedbackRecord

GOOD, BAD, UNRATED = 1, -1, 0


@dataclass(frozen=True)
class FeedbackTexts:
    """What was said: the conversation, the adapter's answer, and the person's rewrite ("" for none)."""

    prompt: str
    system: str
    history: tuple[tuple[str, str], ...]  # (role, content), oldest first
    completion: str
    preferred_completion: str

    @property
    def conversation(self) -> tuple:
        """What the answer replies to: two entries with the same conversation rate answers to one question."""
        return self.system, self.history, self.prompt

    def input_messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        earlier = [{"role": role, "content": content} for role, content in self.history]
        return [*system, *earlier, {"role": "user", "content": self.prompt}]


def seal_texts(feedback_id: str, texts: FeedbackTexts, key: DataKey) -> bytes:
    """The texts as one sealed blob; the row id inside it ties the blob to its row."""
    plain = json.dumps({"feedback_id": feedback_id, "prompt": texts.prompt, "system": texts.system,
                        "history": [list(turn) for turn in texts.history], "completion": texts.completion,
                        "preferred_completion": texts.preferred_completion}, ensure_ascii=False).encode("utf-8")
    out = io.BytesIO()
    writer = SealedWriter(out, key.id, key.key)
    writer.write(plain)
    writer.close()
    return out.getvalue()


def open_texts(record: FeedbackRecord, keys: KeyLookup) -> FeedbackTexts:
    """The texts of a row, decrypted in memory; KeyUnavailable once the job's key is shredded."""
    with io.BufferedReader(SealedReader(io.BytesIO(record.sealed), keys, name=f"feedback {record.id}")) as handle:
        data = json.loads(handle.read().decode("utf-8"))
    if data.get("feedback_id") != record.id:
        # Authentic, but sealed for another row of the same job: a blob copied across rows.
        raise DecryptionError(f"feedback {record.id}: its sealed texts belong to another entry")
    return FeedbackTexts(prompt=data["prompt"], system=data["system"],
                         history=tuple((role, content) for role, content in data["history"]),
                         completion=data["completion"], preferred_completion=data["preferred_completion"])


@dataclass
class Pairs:
    """Preference rows (OpenAI DPO format) and where they came from."""

    rows: list[dict]
    rewrite_pairs: int = 0
    rating_pairs: int = 0


def _row(texts: FeedbackTexts, preferred: str, rejected: str) -> dict:
    return {"input": {"messages": texts.input_messages()},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}]}


def preference_pairs(entries: Iterable[tuple[int, FeedbackTexts]]) -> Pairs:
    """Pairs of (preferred, not preferred) answers to the same conversation, from (rating, texts), oldest first.

    - Each rewrite gives one pair: the rewrite over the answer it rewrote (whatever that answer's rating).
    - Rated answers are grouped by conversation (system, history and prompt all equal). In a group with
      both good and bad answers, every distinct good and every distinct bad answer is used at least
      once: the longer list is walked in order and each of its answers is paired with the next of the
      shorter list, round robin, so max(goods, bads) pairs, not goods x bads (a cross product would
      let one much-rated conversation outweigh the rest). An answer rated both good and bad is
      contradictory and left out of the rating pairs.
    - A pair whose two answers are the same text is dropped (nothing to learn), and so is a repeat
      of a pair already made.
    """
    pairs = Pairs(rows=[])
    seen: set[tuple] = set()

    def add(texts: FeedbackTexts, preferred: str, rejected: str) -> bool:
        key = (texts.conversation, preferred, rejected)
        if preferred == rejected or key in seen:
            return False
        seen.add(key)
        pairs.rows.append(_row(texts, preferred, rejected))
        return True

    groups: dict[tuple, tuple[FeedbackTexts, dict[str, set[int]]]] = {}
    for rating, texts in entries:
        if texts.preferred_completion:
            pairs.rewrite_pairs += add(texts, texts.preferred_completion, texts.completion)
        if rating != UNRATED:
            # dict, not set: answers keep the order in which they were first rated.
            _, ratings = groups.setdefault(texts.conversation, (texts, {}))
            ratings.setdefault(texts.completion, set()).add(rating)
    for texts, ratings in groups.values():
        good = [answer for answer, given in ratings.items() if given == {GOOD}]
        bad = [answer for answer, given in ratings.items() if given == {BAD}]
        if not good or not bad:
            continue
        longer, shorter = (good, bad) if len(good) >= len(bad) else (bad, good)
        for index, answer in enumerate(longer):
            other = shorter[index % len(shorter)]
            preferred, rejected = (answer, other) if longer is good else (other, answer)
            pairs.rating_pairs += add(texts, preferred, rejected)
    return pairs


def missing_pairs_reason(entries: list[tuple[int, FeedbackTexts]]) -> str:
    """Why no pair could be made, with the counts a person needs to fix it."""
    rated = {GOOD: 0, BAD: 0}
    rewrites = 0
    for rating, texts in entries:
        rated[rating] = rated.get(rating, 0) + 1
        rewrites += bool(texts.preferred_completion)
    if not entries:
        return "the job has no feedback yet: record some with RecordFeedback (`tunevault feedback add`)"
    counted = "1 feedback entry" if len(entries) == 1 else f"{len(entries)} feedback entries"
    return (f"the job's {counted} ({rated[GOOD]} rated good, {rated[BAD]} rated bad, {rewrites} with a rewrite) "
            f"make{'s' if len(entries) == 1 else ''} no preference pair: a pair needs a "
            f"rewrite that differs from its answer, or a good and a bad answer to the same prompt, system "
            f"message and history")
