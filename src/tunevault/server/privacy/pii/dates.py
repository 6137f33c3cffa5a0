"""Dates and ages written the ways the rest of the world writes them (patterns.py has the US forms).

    find_dates(text) -> [Candidate] typed DATE or AGE

Day-first numbers (14/02/1931, 07.03.2024, 7.3.24), year-first (1987/05/30), month abbreviations
between dashes or in capitals (7-Mar-2024, 07 MAR 2024), month names in lower case ("march 7",
"4th of july 1986"), in Spanish, French, Italian, German, Dutch and Portuguese ("7 de marzo de
2024", "5. Mai 1951", "4 maart 2024"), card expiry dates ("exp 08/26"), and ages over 89 after
"Age:" or "making him". A library (dateparser) was considered: its search finds dates in any
language but also in words like "now" and "second", and costs far more than these expressions.
"""

from __future__ import annotations

import re
from typing import Iterator

from .patterns import P_DATE, Candidate

_EN = (r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sept?(?:ember)?"
       r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?")
_ES_PT = (r"enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|noviembre|diciembre"
          r"|janeiro|fevereiro|março|maio|junho|julho|setembro|outubro|novembro|dezembro")
_FR_IT = (r"janvier|février|mars|avril|mai|juin|juillet|août|septembre|octobre|novembre|décembre"
          r"|gennaio|febbraio|aprile|maggio|giugno|luglio|settembre|ottobre|dicembre")
_DE_NL = (r"januar|jänner|februar|märz|juni|juli|oktober|dezember|januari|februari|maart|mei|augustus"
          r"|okt|dez|mrt|mei")
_MONTHS = rf"(?:{_EN}|{_ES_PT}|{_FR_IT}|{_DE_NL})"
_YEAR = r"(?:1[89]\d\d|20\d\d)"
_DAY = r"(?:[12]\d|3[01]|0?[1-9])"

_NUMERIC = re.compile(
    rf"(?<![\w/.,-]){_DAY}([/.-])(?:0?[1-9]|1[0-2])\1(?:{_YEAR}|\d\d)(?![\w/-]|[.,]\d)"  # 14/02/1931, 7.3.24
    rf"|(?<![\w/.,-]){_YEAR}([/.])(?:0?[1-9]|1[0-2])\2{_DAY}(?![\w/-]|[.,]\d)"  # 1987/05/30
)
_WRITTEN = re.compile(
    rf"(?<!\w){_DAY}(?:st|nd|rd|th|er|º|\.)?(?:\s+(?:de|of)\s+|[\s-]+){_MONTHS}\.?(?:(?:\s+de\s+|,?[\s-]+){_YEAR})?(?!\w)"
    rf"|(?<!\w){_MONTHS}\.?\s+{_DAY}(?:st|nd|rd|th)?(?:,?\s+{_YEAR})?(?![\w:.]\d|\w)",
    re.I,
)
_EXPIRY = re.compile(r"\b(?:exp(?:iry|ires|iration)?|valid\s+thru|good\s+thru)\.?\s*:?\s*((?:0[1-9]|1[0-2])/(?:\d\d|20\d\d))(?![\w/])", re.I)
_AGE = re.compile(r"\b(?:age[ds]?|aged)\s*(?:of\s*)?:?\s*(\d{2,3})\b|\bmaking\s+(?:him|her|them)\s+(\d{2,3})\b", re.I)
# Lower-case English words that are also month names: only a capital or a number beside makes them one.
_AMBIGUOUS = {"may", "mar", "jun", "dec", "mai", "mei"}


def find_dates(text: str) -> Iterator[Candidate]:
    for m in _NUMERIC.finditer(text):
        yield Candidate(m.start(), m.end(), "DATE", P_DATE)
    for m in _WRITTEN.finditer(text):
        if _plausible(m.group()):
            yield Candidate(m.start(), m.end(), "DATE", P_DATE)
    for m in _EXPIRY.finditer(text):
        yield Candidate(m.start(1), m.end(1), "DATE", P_DATE)
    for m in _AGE.finditer(text):
        group = 1 if m.group(1) else 2
        if 90 <= int(m.group(group)) <= 125:
            yield Candidate(m.start(group), m.end(group), "AGE", P_DATE)


def _plausible(span: str) -> bool:
    """A lower-case month word must be more than "may 5" or "mar 3": a year or a full name."""
    words = re.findall(r"[^\W\d_]+", span)
    month = next((w for w in words if w.lower() not in ("de", "of", "st", "nd", "rd", "th", "er")), "")
    if month.lower() in _AMBIGUOUS and month.islower():
        return bool(re.search(_YEAR, span))
    return True
