"""Builds the blind PII sets (bench/data/pii_blind_*.jsonl) from their marked-up sources.

Each source in pii_blind_src/ holds rows separated by a line "%%"; inside a row an entity is
written {CODE|text} (codes in CODES). Offsets are computed here, never typed by hand, and every
span is checked against the string it was written as, so a label cannot drift from its text.

    python bench/data/build_pii_blind.py          # rewrites the four .jsonl files
    python bench/data/build_pii_blind.py --check  # fails if a .jsonl differs from its source
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETS = ("email", "contracts", "chat", "discharge")
CODES = {
    "N": "NAME", "D": "DATE", "G": "AGE", "A": "ADDRESS", "L": "LOCATION", "Z": "ZIP",
    "P": "PHONE", "F": "FAX", "E": "EMAIL", "S": "SSN", "ID": "ID", "M": "MRN",
    "H": "HEALTH_PLAN_ID", "K": "ACCOUNT", "C": "CREDIT_CARD", "X": "CASE_NUMBER",
    "I": "IP", "U": "URL", "LIC": "LICENSE", "V": "VEHICLE_ID", "DEV": "DEVICE_ID",
}
# An entity never contains a brace or a pipe, so a plain pattern parses the markup unambiguously.
ENTITY = re.compile(r"\{([A-Z]+)\|([^{}|]+)\}")


def parse_row(marked: str) -> dict:
    """Turns one marked-up row into {"text", "entities"} with offsets into the plain text."""
    text, entities, pos = [], [], 0
    length = 0
    for m in ENTITY.finditer(marked):
        before = marked[pos:m.start()]
        text.append(before)
        length += len(before)
        code, value = m.group(1), m.group(2)
        if code not in CODES:
            raise ValueError(f"unknown code {code!r} in row starting {marked[:60]!r}")
        if value != value.strip():
            raise ValueError(f"entity with outer whitespace {value!r}")
        entities.append({"start": length, "end": length + len(value), "type": CODES[code], "_value": value})
        text.append(value)
        length += len(value)
        pos = m.end()
    text.append(marked[pos:])
    plain = "".join(text)
    if any(c in plain for c in "{}"):
        raise ValueError(f"stray brace (broken markup?) in row starting {marked[:60]!r}")
    for i, e in enumerate(entities):
        assert plain[e["start"]:e["end"]] == e.pop("_value"), "span text differs from its label"
        if i and entities[i - 1]["end"] > e["start"]:
            raise ValueError(f"overlapping entities in row starting {plain[:60]!r}")
    return {"text": plain, "entities": entities}


def load_source(name: str) -> list[dict]:
    raw = (HERE / "pii_blind_src" / f"{name}.txt").read_text(encoding="utf-8")
    chunks = [c.strip("\n") for c in re.split(r"^%%$", raw, flags=re.M)]
    rows = [parse_row(c) for c in chunks if c.strip() and not c.lstrip().startswith("#")]
    texts = [r["text"] for r in rows]
    duplicates = {t[:60] for t in texts if texts.count(t) > 1}
    if duplicates:
        raise ValueError(f"{name}: duplicate rows {sorted(duplicates)}")
    return rows


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for name in SETS:
        rows = load_source(name)
        out = HERE / f"pii_blind_{name}.jsonl"
        negatives = sum(1 for r in rows if not r["entities"])
        print(f"{name:<10} {len(rows):>4} rows {sum(len(r['entities']) for r in rows):>5} entities "
              f"{negatives:>4} hard negatives ({negatives / len(rows):.0%})")
        if args.check:
            if not out.exists() or out.read_text(encoding="utf-8") != render(rows):
                stale.append(out.name)
        else:
            out.write_text(render(rows), encoding="utf-8")
    if stale:
        sys.exit(f"out of date with their sources: {', '.join(stale)}")


if __name__ == "__main__":
    main()
