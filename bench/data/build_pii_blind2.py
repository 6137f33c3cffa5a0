"""Build bench/data/pii_blind_{intake,casework}.jsonl from pii_blind2_src/*.txt (second blind round, 2026-12-05).

Source format (one file per set): rows are separated by a line that starts with "===". The text of
a row is every line up to the next separator, without the first and last newline; a row may span
several lines. The separator line may carry tags: "=== neg" marks a hard negative (the build fails
if it has an entity; a row without "neg" must have one). Everything after the tags is a comment.

An entity is written inline as {TYPE|text}; {TYPE/check|text} also runs a check-digit test on the
text (luhn, verhoeff, iban, pesel, cpf, cns, ppsn, curp, clabe, mynumber, ohip), so every number
written as valid really is. The build strips the markup, computes each offset, checks that
text[start:end] is the string it was written as, and rejects unknown types, nested or stray braces,
spans with outer whitespace and duplicate rows. Rows are written as {"text", "entities": [{"start",
"end", "type"}]}, the layout bench/pii_bench.py reads.

    python bench/data/build_pii_blind2.py            # write the .jsonl files
    python bench/data/build_pii_blind2.py --check    # fail if a .jsonl does not match its source
    python bench/data/build_pii_blind2.py --stats    # rows, entities per type, hard negatives
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "pii_blind2_src"
SETS = ("intake", "casework")
TYPES = {"NAME", "DATE", "AGE", "ADDRESS", "LOCATION", "ZIP", "PHONE", "FAX", "EMAIL", "ACCOUNT", "ID",
         "HEALTH_PLAN_ID", "MRN", "CASE_NUMBER", "LICENSE", "VEHICLE_ID", "DEVICE_ID", "IP", "CREDIT_CARD"}


def digits(s: str) -> list[int]:
    return [int(c) for c in re.sub(r"\D", "", s)]


def luhn(s: str) -> bool:
    total = 0
    for i, x in enumerate(digits(s)[::-1]):
        if i % 2:
            x = x * 2 - 9 if x > 4 else x * 2
        total += x
    return total % 10 == 0


_VD = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
       [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
       [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
       [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]]
_VP = [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
       [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
       [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8]]


def verhoeff(s: str) -> bool:
    """Aadhaar: 12 digits, not starting with 0 or 1, Verhoeff check digit."""
    d, c = digits(s), 0
    for i, x in enumerate(d[::-1]):
        c = _VD[c][_VP[i % 8][x]]
    return c == 0 and len(d) == 12 and d[0] >= 2


def iban(s: str) -> bool:
    s = re.sub(r"\s", "", s).upper()
    s = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in s)) % 97 == 1


def pesel(s: str) -> bool:
    d = digits(s)
    return len(d) == 11 and (10 - sum(a * b for a, b in zip(d[:10], [1, 3, 7, 9] * 3)) % 10) % 10 == d[10]


def cpf(s: str) -> bool:
    d = digits(s)
    return len(d) == 11 and all(sum(d[i] * (n + 1 - i) for i in range(n)) * 10 % 11 % 10 == d[n] for n in (9, 10))


def cns(s: str) -> bool:
    """Brazilian Cartão Nacional de Saúde (the 15-digit forms starting 7, 8 or 9)."""
    d = digits(s)
    return len(d) == 15 and sum(x * (15 - i) for i, x in enumerate(d)) % 11 == 0


def ppsn(s: str) -> bool:
    m = re.fullmatch(r"(\d{7})([A-W])([A-IW]?)", re.sub(r"\s", "", s).upper())
    if not m:
        return False
    total = sum(int(c) * (8 - i) for i, c in enumerate(m.group(1)))
    if m.group(3):
        total += 9 * (0 if m.group(3) == "W" else ord(m.group(3)) - 64)
    return "WABCDEFGHIJKLMNOPQRSTUV"[total % 23] == m.group(2)


_CURP = "0123456789ABCDEFGHIJKLMNÑOPQRSTUVWXYZ"


def curp(s: str) -> bool:
    s = s.upper()
    if len(s) != 18 or not s[17].isdigit():
        return False
    return (10 - sum(_CURP.index(c) * (18 - i) for i, c in enumerate(s[:17])) % 10) % 10 == int(s[17])


def clabe(s: str) -> bool:
    d = digits(s)
    return len(d) == 18 and (10 - sum(a * b % 10 for a, b in zip(d[:17], [3, 7, 1] * 6)) % 10) % 10 == d[17]


def mynumber(s: str) -> bool:
    """Japanese Individual Number: 12 digits, the last a mod-11 check digit."""
    d = digits(s)
    if len(d) != 12:
        return False
    p = d[:11][::-1]
    r = sum(p[n - 1] * (n + 1 if n <= 6 else n - 5) for n in range(1, 12)) % 11
    return (0 if r <= 1 else 11 - r) == d[11]


def ohip(s: str) -> bool:
    """Ontario health number: 10 digits (version letters apart), Luhn."""
    d = digits(s)
    return len(d) == 10 and luhn("".join(map(str, d)))


CHECKS = {"luhn": luhn, "verhoeff": verhoeff, "iban": iban, "pesel": pesel, "cpf": cpf, "cns": cns,
          "ppsn": ppsn, "curp": curp, "clabe": clabe, "mynumber": mynumber, "ohip": ohip}

MARK = re.compile(r"\{([A-Z_]+)(?:/([a-z]+))?\|([^{}]*)\}")


def parse_row(raw: str, where: str) -> dict:
    text, entities, pos, out_len = [], [], 0, 0
    for m in MARK.finditer(raw):
        plain = raw[pos:m.start()]
        if "{" in plain or "}" in plain:
            raise SystemExit(f"{where}: stray brace before {m.group(0)!r}")
        text.append(plain)
        out_len += len(plain)
        kind, check, value = m.group(1), m.group(2), m.group(3)
        if kind not in TYPES:
            raise SystemExit(f"{where}: unknown type {kind!r}")
        if not value or value != value.strip():
            raise SystemExit(f"{where}: empty span or outer whitespace in {m.group(0)!r}")
        if check is not None:
            if check not in CHECKS:
                raise SystemExit(f"{where}: unknown check {check!r}")
            if not CHECKS[check](value):
                raise SystemExit(f"{where}: {value!r} fails the {check} check")
        entities.append({"start": out_len, "end": out_len + len(value), "type": kind, "_value": value})
        text.append(value)
        out_len += len(value)
        pos = m.end()
    tail = raw[pos:]
    if "{" in tail or "}" in tail:
        raise SystemExit(f"{where}: stray brace after the last entity")
    text.append(tail)
    row_text = "".join(text)
    for e in entities:
        if row_text[e["start"]:e["end"]] != e.pop("_value"):
            raise SystemExit(f"{where}: offset mismatch")
    return {"text": row_text, "entities": entities}


def read_source(name: str) -> list[tuple[dict, bool]]:
    path = SRC / f"{name}.txt"
    rows: list[tuple[dict, bool]] = []
    tags, lines, first = None, [], None
    raw_lines = path.read_text(encoding="utf-8").split("\n")

    def flush() -> None:
        if tags is None:
            if any(line.strip() for line in lines):
                raise SystemExit(f"{path.name}:1: text before the first separator")
            return
        raw = "\n".join(lines).strip("\n")
        if not raw.strip():
            raise SystemExit(f"{path.name}:{first}: empty row")
        row = parse_row(raw, f"{path.name}:{first}")
        negative = "neg" in tags
        if negative and row["entities"]:
            raise SystemExit(f"{path.name}:{first}: row tagged neg has entities")
        if not negative and not row["entities"]:
            raise SystemExit(f"{path.name}:{first}: row without entities is not tagged neg")
        rows.append((row, negative))

    for number, line in enumerate(raw_lines, 1):
        if line.startswith("==="):
            flush()
            tags, lines, first = line[3:].split("#")[0].split(), [], number + 1
        else:
            lines.append(line)
    flush()
    seen = set()
    for row, _ in rows:
        if row["text"] in seen:
            raise SystemExit(f"{path.name}: duplicate row {row['text'][:60]!r}")
        seen.add(row["text"])
    return rows


def render(rows: list[tuple[dict, bool]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row, _ in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a .jsonl differs from its source")
    parser.add_argument("--stats", action="store_true", help="print rows, hard negatives and entities per type")
    args = parser.parse_args()
    failed = False
    for name in SETS:
        rows = read_source(name)
        out = HERE / f"pii_blind_{name}.jsonl"
        body = render(rows)
        if args.check:
            if not out.exists() or out.read_text(encoding="utf-8") != body:
                print(f"{out.name}: does not match pii_blind2_src/{name}.txt", file=sys.stderr)
                failed = True
        elif not args.stats:
            out.write_text(body, encoding="utf-8")
        if args.stats or not args.check:
            types = Counter(e["type"] for row, _ in rows for e in row["entities"])
            negatives = sum(1 for _, neg in rows if neg)
            print(f"{out.name}: {len(rows)} rows, {sum(types.values())} entities, {negatives} hard negatives "
                  f"({negatives / len(rows):.0%})")
            print("  " + ", ".join(f"{t} {n}" for t, n in types.most_common()))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
