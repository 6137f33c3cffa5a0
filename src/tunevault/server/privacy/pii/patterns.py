"""Pattern recognizers of the PII scrubber: identifiers that have a shape (numbers, dates, addresses).

Each recognizer yields Candidate spans with a priority; pii.py resolves overlaps (higher
priority, then longer span, wins). Identifiers that only a keyword tells apart ("MRN 00482913"
versus "account 00482913") are found by KEYWORD_RULES: the keyword is context, the span is the
value after it. Everything here is pure `re` and runs in microseconds per sentence.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from .lexicon import STATE_ABBREVIATIONS, US_STATES


@dataclass(frozen=True)
class Candidate:
    start: int
    end: int
    type: str
    priority: int


# Priorities: a structured identifier beats an address, which beats a date, a name or a place.
P_EXACT = 100  # e-mail, URL: unambiguous shapes
P_KEYWORD = 95  # "MRN 123", "SSN 123-45-6789", checksummed numbers
P_PHONE = 90
P_ADDRESS = 85
P_DATE = 80
P_ZIP = 70
# Suppresses names inside case-law citations ("Roe v. Wade, 410 U.S. 113"); never reported.
CITATION = "_CITATION"

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()\[\]]+")
# A bare domain ("intake.example.com/forms"): matched from a token's start only (linear time),
# then kept if its last label is a known top-level domain.
_DOMAIN = re.compile(r"(?<![\w.@/:-])[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)+(?P<path>/[^\s<>\"'()\[\]]*)?(?![\w@])")
_TLDS = {"com", "org", "net", "edu", "gov", "io", "us", "info", "biz", "health", "law", "example", "uk", "ca", "au", "de", "ie", "nz", "in", "co", "me", "ly"}
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}(?![\w:])"
    r"|(?<![\w:])(?:[0-9a-fA-F]{1,4}:){1,6}:(?:[0-9a-fA-F]{1,4}:){0,5}[0-9a-fA-F]{1,4}(?![\w:])"  # 2001:db8::8a2e:370:7334
)
_MAC = re.compile(r"(?<![\w:-])(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}(?![\w:-])")
_IBAN = re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![\w-])")
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w-])")
_CARD = re.compile(r"(?<![\w-])[3-6]\d{3}(?:[ -]?\d){9,15}(?![\w-])")
_PHONE = re.compile(
    r"(?<![\w+-])(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![\w-])"
    r"|(?<![\w+])\+(?!1\b)\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}(?![\w-])"
)
_PHONE_SHORT = re.compile(r"(?<![\w-])\d{3}-\d{4}(?![\w-])")
_PHONE_WORDS = re.compile(r"\b(?:phone|tel|telephone|cell|mobile|call(?:ed)?|reached|text(?:ed)?|contact|number|fax|pager|line)\b", re.I)
_FAX_WORDS = re.compile(r"\b(?:fax(?:ed)?|facsimile|f(?=\s*:))\b", re.I)

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]\d\d|20\d\d)"
_DATE = re.compile(
    rf"\b{_MONTH}\.?\s+{_DAY}(?:,?\s+{_YEAR})?\b(?!\s*(?:mg|mcg|ml|mL|%|units?)\b)(?![:.]\d)"  # March 14, 2023
    rf"|\b{_DAY}\s+(?:day\s+of\s+|of\s+)?{_MONTH}\b\.?(?:,?\s+{_YEAR}\b)?"  # 14 March 2023, 9th day of May, 2021
    rf"|\b{_MONTH}\.?,?\s+(?:of\s+)?{_YEAR}\b"  # January 2015, August of 2019
    rf"|(?<![\w/.-])(?:0?[1-9]|1[0-2])([/-])(?:0?[1-9]|[12]\d|3[01])\1(?:{_YEAR}|\d\d)(?![\w/-])"  # 3/14/2023
    rf"|(?<![\w/.-]){_YEAR}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])(?![\w-])"  # 2023-09-28
    rf"|(?<![\w/.-])(?:0?[1-9]|1[0-2])/{_YEAR}(?![\w/-])"  # 1/2024
    rf"|(?<![\w/.-])(?:0?[1-9]|[12]\d|3[01])\.(?:0?[1-9]|1[0-2])\.{_YEAR}(?![\w.])"  # 14.03.2023
)
# "on 3/14", "his 8/22 appointment": a month/day pair without a year needs a word that makes it
# a date, since "Apgar 8/9" and "BP 120/80" are not.
_SHORT_DATE = re.compile(r"(?<![\w/.-])(?:0?[1-9]|1[0-2])/(?:0?[1-9]|[12]\d|3[01])(?![\w/.-])")
_SHORT_DATE_BEFORE = re.compile(
    r"\b(?:on|since|until|till|from|dated|by|before|after|his|her|their|the|of|admitted|discharged|"
    r"seen|visit|due|through|thru|starting|effective|DOB|DOS)\s*:?\s*$", re.I
)
# "since the 2nd", "on the 14th": a day of the month after a word that makes it one.
_DAY_ONLY = re.compile(r"\b(?:on|since|until|till|from|by|before|after|through|starting)\s+the\s+((?:[12]\d|3[01]|[1-9])(?:st|nd|rd|th))\b(?!\s+(?:of\s+(?:each|every|the|a)\s+)?(?:of\s+)?(?:day|week|month|year|time|dose|cycle|percentile|floor|grade|visit|birthday|century|place|attempt)s?\b)")
_SHORT_DATE_AFTER = re.compile(r"^\s*(?:appointment|appt|visit|follow-?up|admission|surgery|procedure|hearing|deadline)\b", re.I)
# Ages over 89 are identifiers (HIPAA 164.514(b)(2)(i)(C)); younger ages are not.
_AGE = re.compile(
    r"\b(?P<n>\d{2,3})(?=\s*-?\s*(?:years?|yrs?|y/o|y\.o\.|yo)(?![a-z]))"
    r"|\b(?:age[ds]?|aged)\s*(?:of\s*)?:?\s*(?P<m>\d{2,3})\b"
    r"|\b(?P<b>\d{2,3})(?=(?:st|nd|rd|th)\s+birthday)"
    r"|\b(?P<w>(?:ninety|one[- ]hundred(?:[- ]and)?)(?:[- ](?:one|two|three|four|five|six|seven|eight|nine|ten))?)(?=[- ]years?[- ]old)"
)

_STATE_NAMES = "|".join(sorted((re.escape(s) for s in US_STATES), key=len, reverse=True))
_STATE = rf"(?:{'|'.join(sorted(STATE_ABBREVIATIONS))}|{_STATE_NAMES})"
_ZIPCODE = r"\d{5}(?:-\d{4})?"
# An abbreviation keeps its full stop only where the sentence goes on ("2217 W. Harrison St., Chicago").
_SUFFIX = (
    r"(?:(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Place|Terrace|Way|Circle|Parkway|Highway"
    r"|Square|Trail|Pike|Alley|Loop|Crescent|Plaza|Path|Run|Bend|Row|Walk|Expressway|Freeway|Turnpike"
    r"|Point|Ridge|Heights|Crossing|Commons|Green|Grove|Hollow|Landing|Manor|Mews|Park|Pass|Spur"
    r"|Station|Vista|View)\b"
    r"|(?:St|Ave|Rd|Blvd|Ln|Dr|Ct|Pl|Ter|Cir|Pkwy|Hwy|Sq|Trl|Aly|Expy|Fwy|Tpke|Pt|Hts|Xing)\b"
    r"(?:\.(?=\s*,|\s+[a-z]|\s+(?:N|S|E|W|NE|NW|SE|SW)\b))?)"
)
_FULL_SUFFIX = (
    r"(?:Street|Avenue|Road|Boulevard|Lane|Drive|Court|Terrace|Circle|Parkway|Highway|Trail|Pike"
    r"|Alley|Crescent|Plaza|Expressway|Freeway|Turnpike)"
)
_DIRECTION = r"(?:N|S|E|W|NE|NW|SE|SW|North|South|East|West)\.?"
_STREET_WORD = r"(?:[A-Z][A-Za-z'’.-]*|\d+(?:st|nd|rd|th))"
_UNIT = r"(?:,?\s*(?:Apt|Apartment|Unit|Suite|Ste|Fl|Floor|Rm|Room|Bldg|Building|Lot|Space|Trlr|#)\.?\s*#?\s*[A-Za-z0-9-]+)"
_CITY_TAIL = (
    rf"(?:,\s*(?:[A-Z][A-Za-z'.-]+\s){{0,3}}[A-Z][A-Za-z'.-]+,?\s+{_STATE}\b\.?(?:,?\s+{_ZIPCODE})?"
    rf"|,?\s+{_STATE}\s+{_ZIPCODE})"
)
_ADDRESS = re.compile(
    r"(?<![\w-])(?:"
    rf"\d{{1,6}}(?:-\d{{1,5}})?[A-Z]?\s+(?:{_DIRECTION}\s+)?(?:{_STREET_WORD}\s+){{1,4}}{_SUFFIX}(?:\s+(?:N|S|E|W|NE|NW|SE|SW)\b)?"
    r"|\d{1,6}\s+(?:Broadway|Bowery|Esplanade|Embarcadero)\b"
    r"|\d{1,6}\s+(?:State\s+)?(?:Route|Rte|Highway|Hwy|County\s+Road|CR|US|Interstate)\s*-?\s*\d{1,4}\b"
    r"|(?:P\.?\s?O\.?\s*Box|Post\s+Office\s+Box)\s+\d{1,6}"
    r"|(?:Rural\s+Route|RR|R\.R\.)\s*\d{1,3},?\s*Box\s+\d{1,5}"
    r"|Box\s+\d{1,5},?\s*(?:Rural\s+Route|RR|R\.R\.)\s*\d{1,3}"
    rf"){_UNIT}?{_CITY_TAIL}?"
)
# A street named without a house number ("lives on Birch Lane", "off Route 9").
_STREET_ONLY = re.compile(
    rf"\b(?:on|off|at|near|of|along|onto)\s+(?P<s>(?:{_STREET_WORD}\s+){{1,3}}{_FULL_SUFFIX}\b"
    r"|(?:State\s+)?(?:Route|Highway|County\s+Road|Interstate)\s+\d{1,4}\b|(?:I|US|SR|CR)-\d{1,3}\b)"
    r"(?!\s+(?:Hospital|Clinic|School|Elementary|Medical|Center|Church|Mall|Station|Bridge|Park)\b)"
)
_ZIP = re.compile(rf"\b(?:ZIP|zip|Zip|postal code|zip code|ZIP code|Zip code)\s*(?:code)?\s*(?:is|:|#)?\s*({_ZIPCODE})\b")
_VIN = re.compile(r"(?<![\w-])(?=[A-HJ-NPR-Z0-9]*\d)(?=[A-HJ-NPR-Z0-9]*[A-HJ-NPR-Z])[A-HJ-NPR-Z0-9]{17}(?![\w-])")
# Medicare Beneficiary Identifier: 11 characters in a fixed letter/digit pattern, no S L O I B Z.
_MBI_L = "[AC-HJKMNP-RT-Y]"
_MBI = re.compile(rf"(?<![\w-])[1-9]{_MBI_L}[{_MBI_L[1:-1]}0-9]\d-?{_MBI_L}[{_MBI_L[1:-1]}0-9]\d-?{_MBI_L}{{2}}\d\d(?![\w-])")
_CASE = re.compile(
    r"(?<![\w-])(?:\d:\d{2}-(?:cv|cr|mj|bk|md|mc|ap|po|sw)-\d{3,6}(?:-[A-Z]{2,4})*"  # 2:21-cv-04417-JLS
    r"|(?:19|20)\d{2}-[A-Z]{1,4}-\d{3,7}"  # 2022-DR-001187
    r"|\d{2}-?(?:CR|CV|CF|CM|DR|FL|JV|PR|SC|TR|CA|CI|MI|ML|AP|BK)-?\d{3,7}(?:-[A-Z]{2,4})?"  # 19-CR-00331
    r"|(?:CV|CR|CF|CM|CA|CI|CP|DR|DV|FL|FD|FA|JV|JD|PR|PA|SC|SA|TR|MI|ML|MH|AP|BK|LT|SP|GN|WR|DC|CIV|CRIM)-\d{2,4}-\d{3,7})(?![\w-])"  # CV-2020-0093
)
# A lone "No. 2024-L-004419" is a case number; "Bar No." and "CSR No." are caught above as licences.
_CASE_NO = re.compile(r"(?<![\w-])No\.\s*(?P<v>\d[\w:/-]*[-:/][\w:/-]*\w)")
# Published case law is public: "Roe v. Wade, 410 U.S. 113 (1973)" names no data subject.
_REPORTER = (
    r"\d{1,4}\s+(?:U\.\s?S\.|S\.\s?Ct\.|L\.\s?Ed\.(?:\s?2d)?|F\.(?:\s?(?:2d|3d|4th))?|F\.\s?Supp\.(?:\s?(?:2d|3d))?"
    r"|F\.\s?App'x|[A-Z][A-Za-z.]{0,12}(?:\s?(?:2d|3d|4th))?)\s+\d{1,5}"
)
_CITATION = re.compile(
    rf"(?:\b(?:[A-Z][\w.'&-]*\s+){{0,5}}[A-Z][\w.'&-]*\s+v\.\s+(?:[A-Z][\w.'&-]*,?\s+){{0,7}}?[A-Z][\w.'&-]*,\s+{_REPORTER}"
    rf"|\b[A-Z][\w'-]+,\s+{_REPORTER}|\b\d{{4}}\s+WL\s+\d+"
    r"|\b[A-Z][\w'’-]+ v [A-Z][\w'’-]+\s+[\[(](?:1[6-9]|20)\d\d[\])](?:\s+\d{1,4})?(?:\s+[A-Z][A-Za-z.]{0,8}\s+\d{1,5})?"  # Donoghue v Stevenson [1932] AC 562
    r"|\bFed\.\s?R\.\s?(?:Civ|Crim|Evid|App|Bankr)\.(?:\s?P\.)?)"
)

# (keyword, type): the keyword is context, the identifier after it is the span. Order matters
# only for readability; overlaps are settled by span length.
_CONNECT = r"(?:\s*(?:(?:number|num|no|id|identifier|is|was|of|listed\s+as|as)\b\.?|[#:=]))*\s*"
_VALUE = r"(?P<v>(?=[A-Za-z0-9()-]*\d)[A-Za-z0-9(][A-Za-z0-9()/-]*[A-Za-z0-9)])"
KEYWORD_RULES: list[tuple[str, str]] = [
    (r"SSN|SS#|social\s+security(?:\s+(?:number|no\.?|#))?|sponsor\s+SSN", "SSN"),
    (r"MRN|MR\s?#|MR\s+No\.?|medical\s+record(?:\s+(?:number|no\.?|#))?|chart|patient\s+(?:id|identifier|number|no\.?|#)|record\s+number|hospital\s+number", "MRN"),
    (r"member(?:\s+(?:id|number|no\.?|#))?|subscriber(?:\s+(?:id|number|no\.?|#))?|policy(?:\s+(?:number|no\.?|#))?"
     r"|medicare(?:\s+(?:beneficiary\s+identifier|number|id|no\.?|#))?|MBI|medicaid(?:\s+(?:id|number|no\.?|#))?"
     r"|health\s+plan(?:\s+(?:id|number|#))?|insurance\s+(?:id|number|#)|beneficiary\s+(?:id|number)|plan\s+id", "HEALTH_PLAN_ID"),
    (r"account|acct\.?|billing\s+account|bank\s+account|claim(?:\s+(?:number|no\.?|#)|(?=\s*[:#]))|IBAN|HAR|FIN", "ACCOUNT"),
    (r"case|docket|index|file|appeal|cause|civil\s+action|matter|report|citation|probate\s+court", "CASE_NUMBER"),
    (r"driver'?s?\s+licen[cs]e|DL|licen[cs]e|bar|DEA|NPI|CSR|certificate|registration|permit", "LICENSE"),
    (r"serial|SN|S/N|UDI|IMEI|MEID|MAC(?:\s+address)?|device\s+id", "DEVICE_ID"),
    (r"VIN|plate|tag|license\s+plate|registration\s+plate", "VEHICLE_ID"),
    (r"passport|employee(?:\s+(?:id|number|#))?|student(?:\s+(?:id|number|#))?|inmate(?:\s+(?:id|number|no\.?|#))?"
     r"|encounter|visit\s+(?:number|#|id)|CSN|tax\s+id|EIN|TIN|DoD\s+id|badge|ID|identification", "ID"),
]
_KEYWORD_RES = [
    (re.compile(rf"(?<![\w-])(?:{kw})(?![\w-])(?:[ \w'’]{{0,40}}?:)?{_CONNECT}(?<![\w-]){_VALUE}(?![\w-])", re.I), typ)
    for kw, typ in KEYWORD_RULES
]
_PLATE = re.compile(
    r"\b(?:[Pp]late|[Tt]ag|[Ll]icense\s+plate|[Rr]egistration\s+plate)(?:\s+(?:number|no\.?|#))?(?:\s+(?:as|is|was))?\s*:?\s*"
    r"(?P<v>(?:[A-Z]{2}\s)?(?=[A-Z0-9 -]*\d)[A-Z0-9]{1,4}(?:[- ]?[A-Z0-9]{2,4})?)(?![\w-])"
)
_ENDING = re.compile(r"\b(?:ending|ends)(?:\s+in)?\s*$", re.I)
_INSURANCE_CONTEXT = re.compile(r"\b(?:member|subscriber|insurance|insurer|plan|policy|medicare|medicaid|tricare|aetna|humana|cigna|blue\s+cross|payer)\b", re.I)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def is_fax(text: str, start: int, end: int) -> bool:
    """Whether the phone number at start:end is announced as a fax number in the same clause."""
    if re.match(r"\s*(?:\((?:fax|facsimile)\)|(?:fax|facsimile)\b(?!\s*(?:no\.?|number|#)?\s*:))", text[end:end + 16], re.I):
        return True
    window = re.sub(r"\b(?:Dr|Mr|Mrs|Ms|St|No|Fig|vs|Inc|Co|Tel|Ph|Ext)\.", "X", text[max(0, start - 45):start], flags=re.I)
    window = re.split(r"[.;\n]\s|\d{4}\b", window)[-1]  # stop at a sentence end or an earlier number
    return bool(_FAX_WORDS.search(window)) and not re.search(r"\b(?:phone|tel|cell|call)\b", window[-12:], re.I)


def find_patterns(text: str) -> Iterator[Candidate]:
    """Every pattern candidate in `text`, overlapping; pii.resolve() picks among them."""
    for m in _EMAIL.finditer(text):
        yield Candidate(m.start(), m.end(), "EMAIL", P_EXACT)
    urls = list(_URL.finditer(text))
    urls += [m for m in _DOMAIN.finditer(text) if m.group().split("/")[0].rsplit(".", 1)[-1] in _TLDS]
    for m in urls:
        end = m.end()
        while end > m.start() and text[end - 1] in ".,;:!?":
            end -= 1
        if "@" not in text[m.start():end]:
            yield Candidate(m.start(), end, "URL", P_EXACT)
    for m in _IPV4.finditer(text):
        yield Candidate(m.start(), m.end(), "IP", P_KEYWORD)
    for m in _IPV6.finditer(text):
        if re.search(r"[a-fA-F]|::|(?:\d+:){3}", m.group()):
            yield Candidate(m.start(), m.end(), "IP", P_KEYWORD)
    for m in _MAC.finditer(text):
        yield Candidate(m.start(), m.end(), "DEVICE_ID", P_KEYWORD)
    for m in _IBAN.finditer(text):
        if re.search(r"\d{4}", m.group()) and len(re.sub(r"\s", "", m.group())) >= 15:
            yield Candidate(m.start(), m.end(), "ACCOUNT", P_KEYWORD)
    for m in _SSN.finditer(text):
        area, group, serial = m.group(1), m.group(3), m.group(4)
        if area not in ("000", "666") and group != "00" and serial != "0000":
            yield Candidate(m.start(), m.end(), "SSN", P_KEYWORD if m.group(2) == "-" else P_PHONE - 1)
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and _luhn(digits):
            yield Candidate(m.start(), m.end(), "CREDIT_CARD", P_KEYWORD - 1)
    for m in _PHONE.finditer(text):
        if len(re.sub(r"\D", "", m.group())) < 10:
            continue
        yield Candidate(m.start(), m.end(), "FAX" if is_fax(text, m.start(), m.end()) else "PHONE", P_PHONE)
    for m in _PHONE_SHORT.finditer(text):
        if _PHONE_WORDS.search(text[max(0, m.start() - 30):m.start()]):
            yield Candidate(m.start(), m.end(), "FAX" if is_fax(text, m.start(), m.end()) else "PHONE", P_PHONE - 2)
    yield from _dates(text)
    for m in _AGE.finditer(text):
        group = next(g for g in ("n", "m", "b", "w") if m.group(g))
        if group == "w" or 90 <= int(m.group(group)) <= 125:
            yield Candidate(m.start(group), m.end(group), "AGE", P_DATE)
    for m in _ADDRESS.finditer(text):
        yield Candidate(m.start(), m.end(), "ADDRESS", P_ADDRESS)
    for m in _STREET_ONLY.finditer(text):
        yield Candidate(m.start("s"), m.end("s"), "ADDRESS", P_ADDRESS - 1)
    for m in _ZIP.finditer(text):
        yield Candidate(m.start(1), m.end(1), "ZIP", P_ZIP)
    for m in _VIN.finditer(text):
        yield Candidate(m.start(), m.end(), "VEHICLE_ID", P_KEYWORD)
    for m in _MBI.finditer(text):
        yield Candidate(m.start(), m.end(), "HEALTH_PLAN_ID", P_KEYWORD)
    for m in _CASE.finditer(text):
        yield Candidate(m.start(), m.end(), "CASE_NUMBER", P_KEYWORD - 2)
    for m in _CASE_NO.finditer(text):
        yield Candidate(m.start("v"), m.end("v"), "CASE_NUMBER", P_KEYWORD - 3)
    for m in _CITATION.finditer(text):
        yield Candidate(m.start(), m.end(), CITATION, 0)
    yield from _keyword_values(text)


def _dates(text: str) -> Iterator[Candidate]:
    for m in _DATE.finditer(text):
        yield Candidate(m.start(), m.end(), "DATE", P_DATE)
    for m in _DAY_ONLY.finditer(text):
        yield Candidate(m.start(1), m.end(1), "DATE", P_DATE - 2)
    for m in _SHORT_DATE.finditer(text):
        if _SHORT_DATE_BEFORE.search(text[max(0, m.start() - 20):m.start()]) or _SHORT_DATE_AFTER.match(text[m.end():m.end() + 20]):
            yield Candidate(m.start(), m.end(), "DATE", P_DATE - 1)


def _keyword_values(text: str) -> Iterator[Candidate]:
    for regex, typ in _KEYWORD_RES:
        for m in regex.finditer(text):
            value = m.group("v")
            start, end = m.start("v"), m.end("v")
            while value.endswith(")") and value.count(")") > value.count("("):
                value, end = value[:-1], end - 1
            if _DATE.fullmatch(value) or _SHORT_DATE.fullmatch(value):
                continue
            if _ENDING.search(text[max(0, start - 12):start]):
                continue  # "account ending in 4421": the last digits alone are not the identifier
            if len(re.sub(r"\W", "", value)) < 4 or (typ == "CASE_NUMBER" and not re.search(r"[-/:]", value) and len(value) < 6):
                continue
            if typ == "ID" and _INSURANCE_CONTEXT.search(text[max(0, start - 40):start]):
                typ_out = "HEALTH_PLAN_ID"
            else:
                typ_out = typ
            if value.startswith("(") and not re.match(r"\(\d{2}\)", value):
                continue
            yield Candidate(start, end, typ_out, P_KEYWORD)
    for m in _PLATE.finditer(text):
        yield Candidate(m.start("v"), m.end("v"), "VEHICLE_ID", P_KEYWORD + 1)
