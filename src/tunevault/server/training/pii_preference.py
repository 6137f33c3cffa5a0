"""Rows the PII scrubber cannot read as uploaded: preference pairs (out as chats, back as TRL rows), tool turns.

The scrubber reads {"messages": [...]}; a pair goes out as its prompt messages followed by the
chosen and then the rejected answer (two assistant messages), so every string of the pair is
scanned, and comes back as a TRL prompt/chosen/rejected row (string form when it came in as one).
"""

from __future__ import annotations

import json
from pathlib import Path

from tunevault.server.contract.preference_rows import PreferenceRow

PLAIN = "tunevault_plain_prompt"  # marks a pair whose prompt is plain text (TRL's string form)


def _as_chat(row: PreferenceRow) -> dict:
    if isinstance(row.prompt, str):
        prompt = [{"role": "user", "content": row.prompt}]
    else:
        prompt = [{"role": m.role, "content": m.content} for m in row.prompt]
    answers = [{"role": "assistant", "content": row.chosen}, {"role": "assistant", "content": row.rejected}]
    return {"messages": prompt + answers, **({PLAIN: True} if isinstance(row.prompt, str) else {})}


def write_pairs_as_chats(rows: list[PreferenceRow], target: Path) -> None:
    with target.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(_as_chat(row)) + "\n")


def _back(chat: dict) -> dict:
    *prompt, chosen, rejected = chat["messages"]
    if chat.get(PLAIN):
        return {"prompt": prompt[0]["content"], "chosen": chosen["content"], "rejected": rejected["content"]}
    return {"prompt": prompt, "chosen": [chosen], "rejected": [rejected]}


def back_to_preference_rows(path: Path) -> None:
    """Rewrite scrubbed chats made by write_pairs_as_chats as TRL preference rows again."""
    chats = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as out:
        for chat in chats:
            out.write(json.dumps(_back(chat)) + "\n")


def has_tool_turns(path: Path) -> bool:
    """Whether a chat JSONL file has tool calls or tool results, whose text is outside `content` as uploaded."""
    from tunevault.server.privacy.sealing.encryption import open_plain

    with open_plain(path) as handle:
        # A false positive (the word in some content) only costs a converted copy.
        return any(b'"tool_calls"' in line or b'"tool"' in line for line in handle)
