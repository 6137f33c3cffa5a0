"""International phone numbers, found by Google's libphonenumber (the `phonenumbers` package).

    find_phones(text) -> [Candidate] typed PHONE or FAX

A number written with a country code ("+44 20 7946 0958") is checked against that country's
numbering plan. A national number ("07700 900418", "030 / 2093 4471") has no country of its own,
so it is tried against each of REGIONS: a number valid in one of them counts, and a number that is
only possible there (right length, no plan check) counts when a phone word stands just before it
("mobile", "tel", "call me on", "Telefoon"). The US-shaped patterns in patterns.py still run;
the resolver keeps one candidate per span.
"""

from __future__ import annotations

import re
from typing import Iterator

from .patterns import P_PHONE, Candidate, is_fax

# Where this appliance's customers' text comes from (the blind sets' countries and the US);
# order matters only for speed: the most common first.
REGIONS = ("US", "GB", "IE", "AU", "NZ", "CA", "IN", "DE", "FR", "ES", "IT", "NL", "AT", "CH", "BE",
           "SE", "PT", "PL", "NG", "GH", "ZA", "KE", "SG", "PH", "PK", "CN", "JP", "BR", "MX")
# Words that announce a phone number, in the languages of the sets; "call her on", "ringa mig på":
# up to three short words may stand between the word and the number.
_PHONE_WORD = re.compile(
    r"\b(?:phone|tel|telephone|tél|telefon|telefono|teléfono|telefoon|mobile|mob|mobil|cell|móvil|cellulare|"
    r"handy|portable|landline|line|desk|direct|call|ring|ringa|bel|reach|text|sms|whatsapp|fax|m|t|"
    r"(?:my|his|her|your|our|new|old)\s+(?:new\s+|old\s+)?(?:number|no|nr|nummer|numéro|número))\b"
    r"|电话|電話|手机|手機|携帯|電話番号",  # Chinese and Japanese: no word boundaries between characters
    re.I,
)
_PHONE_AFTER = re.compile(r"\s*\((?:mobile|mob|home|work|cell|landline|office|direct)\)", re.I)
# Words that announce some other number written like a phone's (national IDs, accounts, companies).
_ID_WORD = re.compile(
    r"\b(?:account|acct|company|registration|reg|vat|tax|insurance|social|security|nhs|chi|urn|ipp|uhid|"
    r"aadhaar|abha|medicare|card|identity|id|pps|sin|tfn|cvr|meter|polisnummer|versicherten\w*|sv|"
    r"rijksregister\w*|register|policy|member|order|invoice|ref|reference|case|claim|file)\b",
    re.I,
)
_SPEAKER = re.compile(r"(?:^|\n)[ \t]*(?:[A-Z][\w .()'-]{0,30}:[ \t]*)?$")
_DIGITS = re.compile(r"\d")
_MIN_DIGITS = 7


def find_phones(text: str) -> Iterator[Candidate]:
    """PHONE/FAX candidates from libphonenumber, one per span (the first region that accepts it)."""
    if len(_DIGITS.findall(text)) < _MIN_DIGITS:
        return
    import phonenumbers

    seen: set[tuple[int, int]] = set()
    for region in REGIONS:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.POSSIBLE):
            span = (match.start, match.end)
            if span in seen or not _accept(text, match, phonenumbers):
                continue
            seen.add(span)
            kind = "FAX" if is_fax(text, match.start, match.end) else "PHONE"
            yield Candidate(match.start, match.end, kind, P_PHONE - 1)


def _accept(text: str, match, phonenumbers) -> bool:
    raw = match.raw_string
    digits = len(_DIGITS.findall(raw))
    if digits < _MIN_DIGITS or _looks_like_date_or_amount(raw):
        return False
    valid = phonenumbers.is_valid_number(match.number)
    if raw.startswith("+"):
        return valid or _announced(text, match.start)
    if _announced(text, match.start) or _PHONE_AFTER.match(text, match.end):
        return valid or digits >= 9
    if _ID_WORD.search(text[max(0, match.start - 30):match.start]):
        return False
    alone = _SPEAKER.search(text[max(0, match.start - 40):match.start]) and re.match(r"[ \t]*(?:\n|$)", text[match.end:])
    mobile = raw.startswith("0") and digits >= 10 and phonenumbers.number_type(match.number) == phonenumbers.PhoneNumberType.MOBILE
    return valid and bool(alone or mobile)


def _announced(text: str, start: int) -> bool:
    """Whether a phone word stands before `start`, nearer than any word of another identifier."""
    window = text[max(0, start - 40):start]
    phone = [m.end() for m in _PHONE_WORD.finditer(window)]
    other = [m.end() for m in _ID_WORD.finditer(window)]
    if not phone or (other and other[-1] > phone[-1]):
        return False
    between = window[phone[-1]:]
    return bool(re.fullmatch(r"(?:\s*[:.#(]?\s*|(?:\W+\w{1,6}){0,3}\W*|[是为為は：:]\s*)", between))


def _looks_like_date_or_amount(raw: str) -> bool:
    return bool(re.fullmatch(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|[\d,]+\.\d\d", raw))
