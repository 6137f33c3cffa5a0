"""Whole international addresses: a found street grown to the unit before it and the locality,
county, state and postcode after it.

    extend_addresses(text, candidates) -> [Candidate]  the ADDRESS candidates, grown

The street itself comes from the US pattern (patterns.py) or from Rampart (ner.py), which finds
"12 Harcourt Road" or "Calle de Alcalá 147" in any country but stops there. A reader of
"Flat 3, [ADDRESS], Dublin 2, D02 X285" still knows where the person lives, so the span grows over
what postal formats put around a street: "Flat 3, " / "Unit 4/" / "Blk " before it, and after it
units ("bus 2", "3º izda.", "#07-1234"), comma-separated localities ("Ponsonby, Auckland",
"Co. Mayo"), states ("VIC", "NSW", "(Québec)") and postcodes of the UK, Ireland, Canada, the
Netherlands and plain 4-6 digit ones.
"""

from __future__ import annotations

import re
from typing import Iterable

from .lexicon import NOT_NAMES
from .patterns import Candidate

_UPPER = r"A-ZÀ-ÖØ-ÞĀ-ſ"
_WORD = rf"[{_UPPER}][\w'’.-]*"
_POSTCODE = (
    r"[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}"  # UK: SW1A 2AA, LA9 4QP
    r"|[A-Z]\d{2}\s?[A-Z0-9]{4}"  # Eircode: D02 X285
    r"|[A-Z]\d[A-Z]\s?\d[A-Z]\d"  # Canada: H3B 4W8
    r"|\d{4}\s?[A-Z]{2}(?![\w])"  # Netherlands: 3511 AX
    r"|\d{5}-\d{3}|\d{4,6}"  # Brazil 22240-003; most of the world
)
_STATE = rf"[A-Z]{{2,3}}(?![\w'’])|\([{_UPPER}][\w'’ -]+\)"
_UNIT = (
    r"(?i:(?:apto|apt|app|bus|int|bureau|bât|flat|unit|suite|ste|piso|pta|esc|etage|stock|og)\.?)\s*[\w-]+\.?"
    r"|\d+[º°ª](?:[ \t]*[A-Za-z]+\.?)?|#\d+-\d+|\d+\.\s*OG(?:\s+\w+)?"
    r"|\d{1,3}(?=,)"  # Singapore: "Ang Mo Kio Ave 8, #07-1234"
)
_PLACE_WORD = rf"[{_UPPER}](?:[^\W\d_]|['’.-])*"  # no digits: "London NW1 6XE" is a town, then a postcode
_LOCALITY = rf"(?:Co\.\s+)?{_PLACE_WORD}(?:[ \t]+(?:{_PLACE_WORD}|\d{{1,2}}(?![\w-])|de|la|du|des|del|na|on|upon)){{0,3}}"
_NEXT = re.compile(
    rf"(?P<sep>,[ \t]*|[ \t]+-[ \t]+|[ \t]+)(?:(?P<post>{_POSTCODE})(?![\w-])|(?P<state>{_STATE})|(?P<unit>{_UNIT})|(?P<loc>{_LOCALITY}))"
)
_BEFORE = re.compile(
    rf"(?:(?i:flat|unit|apt|apartment|suite|blk|block|level|shop|room)\.?[ \t]+[\w-]+(?:,[ \t]*|[ \t]+|/))"
    rf"(?:(?:(?i:block)[ \t]+\w+|{_WORD}(?:[ \t]+{_WORD}){{0,3}}),[ \t]*)*$"
    r"|(?<![\w/])\d+[A-Z]?/$|(?i:blk)[ \t]+$|(?<!\w)C/[ \t]*$|(?<![\w.])P$"
    r"|(?<!\w)(?i:flat|unit|apt|apartment|suite|shop|room|h\.\s?no)\.?[ \t]*(?:No\.?[ \t]*)?$"  # "Flat No. 302"
    rf"|(?<!\w){_WORD}[ \t]+(?:House|Court|Lodge|Cottage|Villa|Farm|Manor|Hall|Mansions),[ \t]*$"  # "Rathmore House, "
    r"|(?<!\w)(?:Am|An der|Im|Auf der|Zum|Zur|In der)[ \t]+$"  # "Am Lindenhof 3b"
)
# A house number before a street written name-first: "12 bis, rue Victor Hugo".
_NUMBER_BEFORE = re.compile(r"(?<![\w/.,])\d{1,5}[A-Za-z]?(?:[ \t]+(?:bis|ter))?,?[ \t]+$")
_NOT_LOCALITY = NOT_NAMES | {"Tel", "Term", "Employer", "Mobile", "Phone", "Email", "DOB", "Carer", "GP", "Fax", "Ward"}
MAX_GROWTH = 90  # characters an address may grow by after the street


def extend_addresses(text: str, candidates: Iterable[Candidate]) -> list[Candidate]:
    """Every ADDRESS candidate grown, and overlapping ones (the US pattern's and the model's) merged."""
    others, grown = [], []
    for c in candidates:
        (grown if c.type == "ADDRESS" else others).append(_grow(text, c) if c.type == "ADDRESS" else c)
    return others + _merge(sorted(grown, key=lambda c: (c.start, c.end)))


def _merge(addresses: list[Candidate]) -> list[Candidate]:
    merged: list[Candidate] = []
    for c in addresses:
        last = merged[-1] if merged else None
        if last is not None and c.start < last.end:
            merged[-1] = Candidate(last.start, max(last.end, c.end), "ADDRESS", max(last.priority, c.priority))
        else:
            merged.append(c)
    return merged


def _grow(text: str, c: Candidate) -> Candidate:
    start, end = c.start, c.end
    before = _BEFORE.search(text[max(0, start - 60):start])
    if before is None and text[start:start + 1].isalpha():
        before = _NUMBER_BEFORE.search(text[max(0, start - 12):start])
    if before:
        start = start - len(before.group())
    while end < len(text) and text[end].isalnum():  # the model may stop inside a word ("QC H|3G")
        end += 1
    end = _grow_after(text, end)
    return c if (start, end) == (c.start, c.end) else Candidate(start, end, c.type, c.priority + 1)


def _grow_after(text: str, end: int) -> int:
    limit, last = end + MAX_GROWTH, "street"
    while end < limit:
        m = _NEXT.match(text, end)
        if not m:
            break
        kind = next(k for k in ("post", "state", "unit", "loc") if m.group(k))
        comma = m.group("sep").strip().startswith(",")
        if not _fits(kind, m.group(kind), comma, last, text[m.end():m.end() + 2]):
            break
        end, last = m.end(), kind
    return end


def _fits(kind: str, value: str, comma: bool, last: str, after: str) -> bool:
    """Whether this piece continues the address: a locality needs a comma (or a postcode before
    it), a state or postcode may follow a locality after a space, a label ("Tel:") ends it."""
    if after.startswith(":"):
        return False
    if kind == "loc":
        words = value.split()
        if words[0] in _NOT_LOCALITY and (len(words) == 1 or words[0] not in ("New", "Cape", "Port", "Saint", "St", "San", "Santa", "Los", "Las", "Lower", "Upper", "North", "South", "East", "West", "Mount", "Fort", "Lake", "Great", "Little", "Old", "El", "La", "Le")):
            return False
        return comma or last == "post"
    if kind == "state":
        return last in ("loc", "street") or comma
    if kind == "post":
        return comma or last in ("loc", "state", "unit")
    return True  # a unit
