"""Identifiers that only their keyword tells apart, outside the US: national IDs, health numbers,
hospital numbers, bank details, professional registrations, court and file references, plates.

    find_national_ids(text) -> [Candidate]

patterns.KEYWORD_RULES has the US keywords; this adds the ones of the UK, Ireland, the EU, India,
Australia, New Zealand, Canada, Singapore and South Africa, and values written in spaced groups
("326 777 1048", "TC 17 92 21 A", "1 97 03 94 989 351 31"), which the US rules stop at.
The keyword is context: the span is the value after it.
"""

from __future__ import annotations

import re
from typing import Iterator

from .patterns import P_KEYWORD, Candidate

# Acronyms match in capitals only ("PAN", not "pan"); phrases in any case.
_ACRONYMS: dict[str, str] = {
    "ID": r"PPSN?|NIE|DNI|NIF|BSN|PAN|NRIC|FIN|SIN|TFN|AHV|AVS|CF",
    "HEALTH_PLAN_ID": r"NHS|CHI|NHI|IHI|CIP|ABHA|PHN|SV",
    "MRN": r"URN|UHID|IPP|NHC|MRN|IP(?=\s+No)|UR",
    "LICENSE": r"GMC|NMC|LANR|AHPRA|MCR|HPCSA|IMC",
    "ACCOUNT": r"BSB|IBAN",
    "CASE_NUMBER": r"RG|Az|UR-Nr|CS\(COMM\)",
}
_PHRASES: dict[str, str] = {
    "ID": (r"pps|tax\s+file|social\s+insurance|national\s+insurance|identity|id\s+card|passport|"
           r"personalausweis|aadhaar|national\s+register|rijksregister(?:nummer)?|sécurité\s+sociale|"
           r"codice\s+fiscale|steuer-?id|burgerservicenummer|documento|visit"),
    "HEALTH_PLAN_ID": (r"nhs|medicare|versichertennummer|versicherten-?nr|polisnummer|membership|medical\s+aid|"
                       r"health\s+card|sv-nummer|carte\s+vitale|tessera\s+sanitaria"),
    "MRN": r"hosp(?:ital)?(?=\s*(?:no|number|#|nr)\b)|fallnummer|episode|patient\s+id|patiëntnummer|patientennummer|numéro\s+de\s+dossier",
    "ACCOUNT": r"sort\s+code|acc|account|customer(?=\s+(?:no|number|id)\b)|kundennummer|folio",
    # A claim number is an ACCOUNT here (patterns.KEYWORD_RULES); a bare "reference" must hold a "/"
    # ("MOK/2210"), since booking references are no identifiers of a person.
    "CASE_NUMBER": (r"our\s+ref|your\s+ref|ref(?:erence)?(?=\W+[A-Z0-9]+/)|(?<!tax\s)file(?=\s+(?:no|number|#)\b)|"
                    r"protocolo|aktenzeichen|geschäftszeichen|rôle|ruolo"),
    "LICENSE": r"reg\.?\s+no|registration\s+no",
    "VEHICLE_ID": r"reg|registration|vehicle\s+identification|kennzeichen|matrícula|immatriculation|targa|kenteken|vehicle",
    "DEVICE_ID": r"meter",
    "ZIP": r"postcode|post\s+code|eircode|postal\s+code|code\s+postal|PLZ",
}
_CONNECT = (r"(?:[ \w'’]{0,30}?\s:)?"  # "sécurité sociale de l'acquéreur :"
            r"(?:\s*(?:(?:number|numbers|no|nr|n°|nº|num|nummer|numéro|número|id|is|was)(?![\w-])|[:#.(-]))*\s*\(?")
# A value: letters and digits, joined by . / - or a single space before digits or 1-2 capitals.
_VALUE = r"(?-i:(?P<v>[A-Z0-9](?:[A-Z0-9]|[./-](?=[A-Z0-9])|[ ](?=\d|[A-Z]{1,3}\b|[A-Z0-9]{3,4}\b))*))"
_RULES = [
    (re.compile(rf"(?<![\w-])(?:{kw})(?![\w-]){_CONNECT}{_VALUE}(?![\w-])"), typ) for typ, kw in _ACRONYMS.items()
] + [
    (re.compile(rf"(?<![\w-])(?:{kw})(?!\w){_CONNECT}{_VALUE}(?![\w-])", re.I), typ) for typ, kw in _PHRASES.items()
]
_COURT_FILE = re.compile(r"(?<![\w-])[A-Z]{2,4}\s+\d{1,6}\s+of\s+(?:19|20)\d\d(?!\w)|(?<![\w-])[A-Z]{2,4}-\d{4}-\d{3}-\d{4,7}(?![\w-])")
_STOP_WORDS = {"OF", "AND", "TO", "IS", "A", "I"}


def find_national_ids(text: str) -> Iterator[Candidate]:
    for regex, typ in _RULES:
        for m in regex.finditer(text):
            start, end = _trim(text, m.start("v"), m.end("v"))
            if _plausible(text[start:end], typ):
                yield Candidate(start, end, typ, P_KEYWORD + 1)
    for m in _COURT_FILE.finditer(text):
        yield Candidate(m.start(), m.end(), "CASE_NUMBER", P_KEYWORD)


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Drops a trailing lone capital word that is English ("... 2023 A" stays, "... 2023 I" goes)."""
    words = text[start:end].split(" ")
    while len(words) > 1 and words[-1] in _STOP_WORDS and words[-1] != "A":
        end -= len(words.pop()) + 1
    return start, end


def _plausible(value: str, typ: str) -> bool:
    if re.fullmatch(r"\d{1,4}[/.-](?:0?[1-9]|1[0-2])[/.-]\d{2,4}", value):
        return False  # "visit 12/01/2022": a date after the keyword, found as a DATE
    compact = re.sub(r"[\s./-]", "", value)
    if not re.search(r"\d", compact) and typ != "ZIP":
        return False
    if typ == "ZIP":
        return bool(re.search(r"\d", compact)) and 3 <= len(compact) <= 10
    if typ == "VEHICLE_ID":  # a plate has letters too ("Vehicle: 2017 Subaru" is a model year)
        return 4 <= len(compact) <= 17 and bool(re.search(r"[A-Z]", compact))
    return len(compact) >= 4 and not re.fullmatch(r"(?:19|20)\d\d", compact)
