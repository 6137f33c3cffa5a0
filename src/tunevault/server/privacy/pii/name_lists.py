"""Name and place recognizers of the PII scrubber: spaCy's NER plus rules over gazetteers.

Four sources of NAME candidates, strongest first: a title ("Dr. Okafor"), a role word
("plaintiff Jessica Moreno", "daughter, Angela Price"), a census first name followed by a census
surname ("Yolanda Carter"), and spaCy's PERSON entities cleaned of titles, possessives,
eponyms ("Parkinson disease", "Daubert hearing") and drug names. LOCATION candidates (cities,
towns, counties: HIPAA's geographic subdivisions smaller than a state) come from spaCy's
GPE/LOC entities, a "<Name> County" pattern, and US city names from the USPS table when a
preposition ("moved from Tucson") or a state ("Laredo, Texas") says they are places.
"""

from __future__ import annotations

import re
from typing import Iterator

from .lexicon import (
    COUNTRIES,
    CREDENTIALS,
    DRUG_NAMES,
    DRUG_SUFFIXES,
    EPONYM_FOLLOWERS,
    EPONYMS,
    NAME_SUFFIXES,
    NOT_NAMES,
    REGIONS,
    ROLE_WORDS,
    STATE_ABBREVIATIONS,
    TITLES,
    US_STATES,
    census_names,
    us_places,
)
from .patterns import Candidate
from .places import world_cities

# Priorities (pii_patterns has the higher ones of shaped identifiers). A city after a preposition
# ("in Long Beach") outranks a first-name-plus-surname match, but not a title or a role word.
P_TITLE = 66
P_ROLE = 63
P_PLACE_CONTEXT = 61
P_GAZETTEER = 60
P_SPACY_PERSON = 55
P_COUNTY = 53
P_SPACY_PLACE = 50
P_PROPAGATED = 45

_WORD = re.compile(r"[^\W\d_]+(?:(?:['’](?![sS]\b)|-)[^\W\d_]+)*")
_HEADER_WORDS = {"from", "to", "cc", "attn", "re"}
# "signed by Saoirse Quinlan", "witnessed by Olusegun Bakare": an act done by a person.
_BY_PHRASE = re.compile(
    r"\b(?:signed|seen|examined|dictated|reviewed|performed|witnessed|prepared|attested|referred|authored|"
    r"transcribed|verified|approved|ordered|treated|evaluated|interviewed|represented|accompanied|"
    r"notarized|sworn|served|counseled|assessed|cosigned|co-signed|documented|supervised)\s+by\s+$", re.I)
# "Saoirse Quinlan, MD", "Leila Hosseini NP": a credential after a name.
_CREDENTIAL_AFTER = re.compile(r",?\s(?:MD|M\.D\.|DO|D\.O\.|RN|NP|PA-C|PhD|Ph\.D\.|Esq\.?|DDS|PharmD|LPN|LCSW|CNM|CRNA|DPM|APRN|DNP|RPh|CSR|RPR|LMFT|LPC)\b")
# "Libman-Sacks endocarditis", "Hirschsprung anomaly": medical nouns after an eponym.
_MEDICAL_ENDINGS = ("itis", "osis", "oma", "omas", "emia", "pathy", "plasty", "ectomy", "otomy", "algia", "ism", "iasis", "plegia", "trophy", "cardia")
# "Acme Tooling", "Krause Builders": a capitalised word that makes the name a business's.
_ORG_WORDS = {
    "Inc", "LLC", "LLP", "Ltd", "Corp", "Corporation", "Company", "Co", "Group", "Holdings", "Partners",
    "Associates", "Builders", "Construction", "Tooling", "Manufacturing", "Industries", "Logistics",
    "Transit", "Trucking", "Motors", "Realty", "Properties", "Bank", "Bancorp", "Insurance", "Capital",
    "Securities", "Foundation", "Institute", "University", "College", "School", "Hospital", "Clinic",
    "Pharmacy", "Pharmaceuticals", "Labs", "Laboratories", "Technologies", "Systems", "Services",
    "Solutions", "Consulting", "Law", "Legal", "Firm", "Center", "Centre", "Health", "Healthcare",
    # Company forms and words of other countries: "Caffè Roma Srl", "Fitzgerald Walsh Solicitors".
    "Srl", "SpA", "GmbH", "AG", "KG", "BV", "NV", "SA", "SAS", "Sarl", "Pty", "Plc", "PLC", "Oy", "AB",
    "Solicitors", "Attorneys", "Accountants", "Estates", "Realtors", "Agency", "Villas", "Hotel",
}
# Businesses whose names read like a person's.
_FIRMS = {
    "Morgan Stanley", "Wells Fargo", "Goldman Sachs", "Johnson & Johnson", "Ernst & Young", "Charles Schwab",
    "Edward Jones", "Merrill Lynch", "Raymond James", "Baker McKenzie", "Eli Lilly", "Bristol Myers Squibb",
    "Procter & Gamble", "Dow Jones", "Dean Witter", "Kaiser Permanente", "Johns Hopkins", "Cedars-Sinai",
    "Sloan Kettering", "Hale & Dorr", "Allen & Overy", "Baker Botts", "Jones Day", "Sidley Austin",
    "Skadden", "Latham & Watkins", "Kirkland & Ellis", "Abbott", "Walgreens", "Dollar General",
    "Ben & Jerry", "Harley Davidson", "Rolls Royce", "Mercedes Benz", "Ford", "Kellogg", "Wendy",
    "Marshall Field", "Jenny Craig", "Tommy Hilfiger", "Ralph Lauren", "Calvin Klein", "Estee Lauder",
}
_PARTICLES = {"de", "da", "del", "della", "di", "van", "von", "der", "den", "la", "le", "du", "dos", "das", "bin", "ibn", "al", "el", "y", "ten", "ter"}
# "Deposition of Caspian Wexford", "In re Marriage of Lindqvist", "Estate of Harold Vance".
_OF_WORDS = {
    "deposition", "testimony", "statement", "affidavit", "declaration", "estate", "guardianship",
    "conservatorship", "marriage", "custody", "adoption", "matter", "interview", "examination",
    "cross-examination", "trust", "will", "death", "autopsy", "care", "behalf", "daughter", "son",
    "wife", "husband", "mother", "father", "widow", "children", "family",
}
# Parties of a case caption: "Kowalczyk v. Bright Horizons", "State v. Everett Crane".
_CAPTION = re.compile(r"\b([A-Z][\w'’-]+(?: [A-Z][\w'’-]+){0,2}) v\. ([A-Z][\w'’-]+(?: [A-Z][\w'’-]+){0,2})")
_NOT_PARTIES = {"State", "People", "United States", "Commonwealth", "City", "County", "Town", "Village", "Board", "Department"}
_PLACE_PREPOSITIONS = {"in", "from", "near", "outside", "around", "of", "to", "at"}
_NON_PLACES = set(US_STATES) | COUNTRIES | REGIONS | STATE_ABBREVIATIONS
_COUNTY = re.compile(r"\b(?:[A-Z][a-z]+(?:[ -][A-Z][a-z]+)?|St\. [A-Z][a-z]+) (?:County|Parish|Borough)\b")
_PERSON_LABELS = {"PERSON"}
_HEADING_WORDS = {"AGREEMENT", "TENANCY", "RESIDENTIAL", "CONTRACT", "LEASE", "DEED", "WILL", "TESTAMENT", "SUMMARY", "DISCHARGE", "DECLARATION", "STATUTORY", "NOTICE", "ORDER", "COURT", "HIGH", "IN", "THE", "OF", "AND"}
_FIRMS_RE = re.compile(r"\b(?:" + "|".join(sorted((re.escape(f) for f in _FIRMS), key=len, reverse=True)) + r")\b")
_PLACE_LABELS = {"GPE", "LOC"}


class _Tokens:
    """Words of a text with their offsets, and the questions the rules ask about them."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.words = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]
        self.firsts, self.lasts = census_names()

    def gap(self, i: int) -> str:
        """The characters between word i and word i + 1."""
        return self.text[self.words[i][1]:self.words[i + 1][0]]

    def namey(self, i: int) -> bool:
        word = self.words[i][2]
        if word.isupper() and len(word) > 2 and self.upper_run(i):
            word = word.title()  # "PATIENT: JOHN SMITH": capitals count when the census knows them
        if not word[0].isupper() or word in NOT_NAMES or word in DRUG_NAMES or word in CREDENTIALS:
            return False
        if len(word) == 1:  # an initial, "J."
            return self.text[self.words[i][1]:self.words[i][1] + 1] == "."
        return not word.isupper() and not _drug_like(word)

    def upper_run(self, i: int) -> bool:
        """Whether the all-capitals word i is a census name next to another one."""
        def known(k: int) -> bool:
            w = self.words[k][2]
            return w.isupper() and (w.title() in self.firsts or w.title() in self.lasts) and w.title() not in NOT_NAMES
        if not known(i):
            return False
        return (i > 0 and known(i - 1) and self.gap(i - 1) == " ") or (i + 1 < len(self.words) and known(i + 1) and self.gap(i) == " ")

    def _particle_then_name(self, j: int) -> bool:
        """Whether the particle at word j ("de", "van") is followed, maybe after more particles, by a name."""
        while j < len(self.words) and self.words[j][2].lower() in _PARTICLES:
            if j + 1 >= len(self.words) or self.gap(j) != " ":
                return False
            j += 1
        return j < len(self.words) and self.namey(j)

    def run(self, i: int, limit: int) -> int:
        """Index one past the last word of the name-like run starting at word i (i when none)."""
        j = taken = i
        while j < len(self.words) and taken - i < limit:
            word = self.words[j][2]
            particle = word.lower() in _PARTICLES and self._particle_then_name(j)
            if not (self.namey(j) or particle or (j > i and word in NAME_SUFFIXES)):
                break
            if j > i and not self._joined(j - 1):
                break
            j += 1
            taken += 0 if particle else 1
        # A trailing initial is more likely the start of a sentence ("... Dr. Lee. A ...").
        while j > i + 1 and len(self.words[j - 1][2]) == 1:
            j -= 1
        return j

    def _joined(self, i: int) -> bool:
        """Whether words i and i + 1 belong to one name: one space, or an initial's full stop."""
        gap, nxt = self.gap(i), self.words[i + 1][2]
        if gap == " ":
            return True
        if gap == ". ":
            return len(self.words[i][2]) == 1
        return gap == ", " and nxt in NAME_SUFFIXES

    def span(self, i: int, j: int) -> tuple[int, int]:
        end = self.words[j - 1][1]
        if self.words[j - 1][2] in ("Jr", "Sr") and self.text[end:end + 1] == ".":
            end += 1
        return self.words[i][0], end

    def followed_by_eponym_word(self, end: int) -> bool:
        rest = re.match(r"(?:['’]s?)?\s+([A-Za-z-]+)", self.text[end:end + 30])
        if not rest:
            return False
        word = rest.group(1)
        return word.lower() in EPONYM_FOLLOWERS or (word.islower() and word.endswith(_MEDICAL_ENDINGS)) or word in _ORG_WORDS


def _drug_like(word: str) -> bool:
    lower = word.lower()
    return len(lower) > 5 and lower.endswith(DRUG_SUFFIXES)


def find_names_and_places(text: str, doc) -> Iterator[Candidate]:
    """NAME and LOCATION candidates; `doc` is spaCy's Doc of `text`, or None to use rules only."""
    tokens = _Tokens(text)
    entity_spans = [] if doc is None else [(e.start_char, e.end_char, e.label_) for e in doc.ents]
    firms = [(m.start(), m.end()) for m in _FIRMS_RE.finditer(text)]
    candidates = list(_title_and_role_names(tokens, entity_spans))
    candidates += _gazetteer_names(tokens)
    candidates += _surname_names(tokens)
    if doc is not None:
        candidates += _spacy_entities(tokens, entity_spans)
    candidates += _places(tokens)
    for c in candidates:
        if not any(s < c.end and c.start < e for s, e in firms) or c.priority >= P_TITLE:
            yield c


def _title_and_role_names(tokens: _Tokens, entity_spans) -> Iterator[Candidate]:
    words, text = tokens.words, tokens.text
    for i, (start, end, word) in enumerate(words[:-1]):
        lower = word.lower()
        if lower in TITLES and word[0].isupper():
            j = i + 1
            while j < len(words) and words[j][2].lower() in TITLES and words[j][2][0].isupper():
                j += 1  # "Staff Sgt. Corrine Vaughn"
            if j < len(words) and re.fullmatch(r"\.?\s+", text[words[j - 1][1]:words[j][0]]):
                k = tokens.run(j, 3)
                if k > j:
                    yield Candidate(*tokens.span(j, k), "NAME", P_TITLE)
            continue
        header = lower in _HEADER_WORDS and text[end:end + 1] == ":"
        gap = text[end:words[i + 1][0]]
        of_phrase = lower in _OF_WORDS and gap == " " and words[i + 1][2] == "of" and i + 2 < len(words)
        by_phrase = lower == "by" and bool(_BY_PHRASE.search(text[max(0, start - 30):end + 1]))
        if of_phrase:
            gap = text[end:words[i + 2][0]]
        elif lower not in ROLE_WORDS and not header and not by_phrase:
            continue
        elif not re.fullmatch(r"(?:['’]s)?\s*[,:(]?\s*|\s+(?:is|was|named)\s+", gap):
            continue
        j = i + 2 if of_phrase else i + 1
        if by_phrase and not re.fullmatch(r"\s+", gap):
            continue
        k = tokens.run(j, 4)
        if k == j:
            continue
        span_start, span_end = tokens.span(j, k)
        # "Name: Okonkwo, Chidinma": a surname, a comma and a given name after a label.
        if ":" in gap and k == j + 1 and k < len(words) and re.fullmatch(r",\s", tokens.gap(k - 1)):
            k2 = tokens.run(k, 2)
            if k2 > k:
                span_end = tokens.span(k, k2)[1]
                k = k2
        names = [w for _, _, w in words[j:k]]
        known = any(n in tokens.firsts or n in tokens.lasts for n in names)
        tagged = any(s < span_end and span_start < e and label in ("PERSON", "ORG", "GPE") for s, e, label in entity_spans)
        if k - j == 1 and any(s <= span_start and span_end <= e and label in ("NORP", "LANGUAGE") for s, e, label in entity_spans):
            continue  # "Interpreter (Vietnamese)"
        # After "deposition of" a lone unknown capitalised word may be a title ("Statement of Work").
        of_ok = of_phrase and (k - j >= 2 or bool(re.search(r"\bIn re\b", text[max(0, start - 8):start + 1])))
        if (known or tagged or header or of_ok or by_phrase) and not tokens.followed_by_eponym_word(span_end):
            yield Candidate(span_start, span_end, "NAME", P_ROLE)
    for i in range(len(words)):
        if not tokens.namey(i) or (i > 0 and tokens.namey(i - 1) and tokens._joined(i - 1)):
            continue
        k = tokens.run(i, 4)
        if k == i:
            continue
        span_start, span_end = tokens.span(i, k)
        if not _CREDENTIAL_AFTER.match(text, span_end) or text[span_start:span_end] in _FIRMS:
            continue
        # "Hosseini, Leila NP": a surname and a comma before the given name.
        before = re.search(r"([^\W\d_][\w'’-]*),\s$", text[max(0, span_start - 30):span_start])
        if k - i == 1 and before and before.group(1)[0].isupper() and before.group(1) not in NOT_NAMES:
            span_start -= len(before.group(0))
        yield Candidate(span_start, span_end, "NAME", P_ROLE)
    for m in _CAPTION.finditer(text):
        for g in (1, 2):
            party = m.group(g)
            if party in _NOT_PARTIES or any(w in NOT_NAMES for w in party.split()):
                continue
            if len(party.split()) == 1 or party.split()[0] in tokens.firsts:
                yield Candidate(m.start(g), m.end(g), "NAME", P_ROLE)


def _gazetteer_names(tokens: _Tokens) -> Iterator[Candidate]:
    """A census first name followed by a census surname: "Yolanda Carter", "Ruth Ann Kessler"."""
    words = tokens.words
    for i, (_, _, word) in enumerate(words[:-1]):
        if word.isupper():
            word = word.title()
        if word not in tokens.firsts or not tokens.namey(i):
            continue
        if i > 0 and tokens.namey(i - 1) and re.fullmatch(r"\s", tokens.gap(i - 1)):
            continue  # inside a longer run; the run's own first word decides
        k = tokens.run(i, 4)
        if k - i < 2:
            continue
        last = words[k - 1][2] if words[k - 1][2] not in NAME_SUFFIXES else words[k - 2][2]
        last = last.title() if last.isupper() else last
        if all(p in tokens.lasts for p in last.split("-")) and last not in EPONYMS:
            start, end = tokens.span(i, k)
            if not tokens.followed_by_eponym_word(end):
                yield Candidate(start, end, "NAME", P_GAZETTEER)


def _surname_names(tokens: _Tokens) -> Iterator[Candidate]:
    """An unlisted given name before a census surname: "Ptolemy Grant", "Ignatius Fairbanks III".

    Weaker evidence than a listed first name, so the pair must stand alone: no capitalised word
    right before or after it (which would make it part of an organisation's or a place's name).
    """
    words, text = tokens.words, tokens.text
    cities, _ = us_places()
    for i in range(len(words) - 1):
        first, last = words[i][2], words[i + 1][2]
        if not (tokens.namey(i) and tokens.namey(i + 1) and tokens.gap(i) == " " and len(first) >= 3):
            continue
        if first in tokens.firsts or first in cities or first in EPONYMS or first.lower() in TITLES or first.lower() in ROLE_WORDS:
            continue
        surname_parts = last.split("-")
        if not all(p in tokens.lasts for p in surname_parts) or last in EPONYMS:
            continue
        if i > 0 and words[i - 1][2][0].isupper() and re.fullmatch(r"\s", tokens.gap(i - 1)):
            continue
        k = i + 2
        if k < len(words) and words[k][2] in NAME_SUFFIXES and tokens.gap(k - 1) == " ":
            k += 1
        if k < len(words) and words[k][2][0].isupper() and re.fullmatch(r"\s|\s&\s", text[words[k - 1][1]:words[k][0]]):
            continue
        start, end = tokens.span(i, k)
        if not tokens.followed_by_eponym_word(end):
            yield Candidate(start, end, "NAME", P_SPACY_PERSON - 2)


def _spacy_entities(tokens: _Tokens, entity_spans) -> Iterator[Candidate]:
    text = tokens.text
    cities, counties = us_places()
    for start, end, label in entity_spans:
        if label in _PERSON_LABELS:
            cleaned = _clean_person(tokens, start, end)
            if not cleaned or _document_heading(text[cleaned[0]:cleaned[1]]):
                continue
            span = text[cleaned[0]:cleaned[1]]
            before = re.search(r"([A-Za-z]+)\s+$", text[max(0, cleaned[0] - 12):cleaned[0]])
            if (" " not in span and span not in tokens.firsts and before and before.group(1).lower() in ("in", "near", "from")
                    and not re.match(r"['’]", text[cleaned[1]:cleaned[1] + 1])):
                yield Candidate(*cleaned, "LOCATION", P_SPACY_PLACE)  # "born in Kraków": a place spaCy took for a person
            else:
                yield Candidate(*cleaned, "NAME", P_SPACY_PERSON)
        elif label in _PLACE_LABELS:
            place = _plausible_place(tokens, start, end, require_context=True)
            if place:
                yield Candidate(*place, "LOCATION", P_SPACY_PLACE)


def _plausible_place(tokens: _Tokens, start: int, end: int, require_context: bool) -> tuple[int, int] | None:
    """A model's place span without a leading "the", or None when it is no place a reader could find.
    With require_context, the place must also be a known US city or county, follow a preposition,
    or be followed by a state."""
    text = tokens.text
    cities, counties = us_places()
    span = text[start:end]
    if span.lower().startswith("the "):
        start, span = start + 4, span[4:]
    words = span.split()
    if (
        span in _NON_PLACES
        or not words
        or any(not w[0].isupper() and w not in ("of", "de", "la", "del") for w in words)
        or re.search(r"\d|\.", span)
        or (span.isupper() and span not in cities)
        or (len(words) == 1 and (span in NOT_NAMES or span in EPONYMS or span in CREDENTIALS or span in DRUG_NAMES or _drug_like(span)))
        or (len(words) == 1 and span in tokens.firsts and span not in cities)
        or tokens.followed_by_eponym_word(end)
    ):
        return None
    if not require_context:
        return start, end
    before = re.search(r"([A-Za-z]+)\s+$", text[max(0, start - 12):start])
    known = span in cities or span in counties
    placed = before is not None and before.group(1).lower() in ("in", "near", "from", "to", "outside", "around", "of")
    if known or placed or re.match(rf",\s*(?:{'|'.join(US_STATES)}|[A-Z]{{2}}\b)", text[end:end + 20]):
        return start, end
    return None


def vet_ner(text: str, candidates: list[Candidate]) -> Iterator[Candidate]:
    """The NER model's names and places, cleaned and checked as spaCy's are (titles, eponyms,
    drugs, firms, lab values out); addresses pass as they are."""
    tokens = _Tokens(text)
    firms = [(m.start(), m.end()) for m in _FIRMS_RE.finditer(text)]
    for c in candidates:
        if any(s < c.end and c.start < e for s, e in firms):
            continue
        if c.type == "NAME":
            cleaned = _clean_person(tokens, c.start, c.end)
            if cleaned and not _document_heading(text[cleaned[0]:cleaned[1]]):
                span = text[cleaned[0]:cleaned[1]]
                # The model reads "the Rotterdam depot" as a person; a world city that is no first name is a place.
                kind = "LOCATION" if span in world_cities() and span not in tokens.firsts else "NAME"
                yield Candidate(*cleaned, kind, c.priority)
        elif c.type == "LOCATION":
            place = _plausible_place(tokens, c.start, c.end, require_context=False)
            if place:
                yield Candidate(*place, "LOCATION", c.priority)
        elif c.type != "ZIP":  # a postcode alone is found by its keyword (patterns), not by shape
            yield c


def _document_heading(span: str) -> bool:
    """ "RESIDENTIAL TENANCY AGREEMENT": capitals that name a document, not a person."""
    return any(w.title() in NOT_NAMES or w.upper() in _HEADING_WORDS for w in span.split()) if span.isupper() else False


def _clean_person(tokens: _Tokens, start: int, end: int) -> tuple[int, int] | None:
    """spaCy's PERSON span without titles, roles, possessives and credentials; None if not a name."""
    text = tokens.text
    words = [(m.start() + start, m.end() + start, m.group()) for m in _WORD.finditer(text[start:end])]
    while words and (words[0][2].lower() in TITLES or words[0][2].lower() in ROLE_WORDS or words[0][2] in NOT_NAMES):
        words.pop(0)
    while words and (words[-1][2] in CREDENTIALS or words[-1][2] in NOT_NAMES):
        words.pop()
    if not words:
        return None
    names = [w for _, _, w in words]
    start, end = words[0][0], words[-1][1]
    if not names[0][0].isupper() or not names[-1][0].isupper() or re.search(r"\d", text[start:end]):
        return None
    if any(not n[0].isupper() and n not in _PARTICLES for n in names):
        return None
    if len(names) == 1:
        only = names[0]
        if only in EPONYMS or only in DRUG_NAMES or _drug_like(only) or (only.isupper() and len(only) > 1):
            return None
        if re.match(r"\s*\d", text[end:end + 3]):
            return None  # "Plt 188", "Hgb 10.4": a lab value, not a person
        if "-" in only and re.match(r"\s+[a-z]", text[end:end + 2]):
            return None  # "Libman-Sacks endocarditis": a hyphenated eponym before a medical noun
    if any(n in _ORG_WORDS for n in names):
        return None  # "Acme Tooling"
    if all(n in NOT_NAMES or n in EPONYMS for n in names) or tokens.followed_by_eponym_word(end):
        return None
    if len(names) == 1 and len(names[0]) == 1:
        return None
    return start, end


def _places(tokens: _Tokens) -> Iterator[Candidate]:
    text, words = tokens.text, tokens.words
    for m in _COUNTY.finditer(text):
        if m.group().split()[0] not in NOT_NAMES:
            yield Candidate(m.start(), m.end(), "LOCATION", P_COUNTY)
    cities, _ = us_places()
    for i, (start, _, word) in enumerate(words):
        if not word[0].isupper() or word in NOT_NAMES:
            continue
        for length in (3, 2, 1):
            j = i + length
            if j > len(words) or any(not re.fullmatch(r"\s", tokens.gap(x)) for x in range(i, j - 1)):
                continue
            end = words[j - 1][1]
            name = text[start:end]
            if name not in cities:
                continue
            before = words[i - 1][2].lower() if i > 0 else ""
            after = text[end:end + 24]
            state_follows = re.match(rf",\s*(?:{'|'.join(US_STATES)}|[A-Z]{{2}}\b)(?!\.)", after)
            if state_follows and state_follows.group().split(",")[1].strip() in CREDENTIALS and not re.match(r",\s*[A-Z]{2}\s+\d{5}", after):
                state_follows = None  # "Saoirse Quinlan, MD" is a doctor, not Quinlan, Maryland
            by_preposition = before in _PLACE_PREPOSITIONS and not (before in ("to", "at") and name in tokens.firsts)
            if state_follows and (state_follows.group().split(",")[1].strip() in STATE_ABBREVIATIONS or state_follows.group().split(",")[1].strip() in US_STATES):
                yield Candidate(start, end, "LOCATION", P_PLACE_CONTEXT)
            elif by_preposition and re.fullmatch(r"\s", text[words[i - 1][1]:start]) and not _followed_by_name(tokens, j):
                yield Candidate(start, end, "LOCATION", P_PLACE_CONTEXT)
            break


def _followed_by_name(tokens: _Tokens, j: int) -> bool:
    """Whether word j continues a capitalised run ("in Gary Smith's room", "at Summit Credit Union")."""
    return j < len(tokens.words) and tokens.words[j][2][0].isupper() and re.fullmatch(r"\s|\s&\s", tokens.gap(j - 1)) is not None


def propagate_names(text: str, names: list[tuple[int, int]]) -> Iterator[Candidate]:
    """Later mentions of a found name's words: "Maria Delgado ... Delgado reported"."""
    tokens = _Tokens(text)
    found = set()
    for start, end in names:
        for m in _WORD.finditer(text[start:end]):
            word = m.group()
            if len(word) >= 3 and word[0].isupper() and word not in NOT_NAMES and word not in EPONYMS:
                found.add(word)
    if not found:
        return
    for start, end, word in tokens.words:
        if word in found and not tokens.followed_by_eponym_word(end):
            yield Candidate(start, end, "NAME", P_PROPAGATED)


_AGE_AFTER_NAME = re.compile(r",\s*(\d{2,3})(?=\s*[,.;)]|\s+(?:y|yo|yrs?|years?)\b|$)")


def ages_after_names(text: str, names: list[tuple[int, int]]) -> Iterator[Candidate]:
    """ "Edwin Holm, 93": an age over 89 written right after a name."""
    for _, end in names:
        m = _AGE_AFTER_NAME.match(text, end)
        if m and 90 <= int(m.group(1)) <= 125:
            yield Candidate(m.start(1), m.end(1), "AGE", 80)


def whole_names(text: str, candidates: list[Candidate]) -> list[Candidate]:
    """A NAME that holds a stronger but shorter NAME takes its priority: "MARGARET ANNE O'SULLIVAN"
    from the model beats "MARGARET ANNE" from the census lists, so the surname is not left bare."""
    names = [c for c in candidates if c.type == "NAME"]
    out = []
    for c in candidates:
        if c.type == "NAME":
            inside = [n.priority for n in names if c.start <= n.start and n.end <= c.end and (n.start, n.end) != (c.start, c.end)]
            if inside and max(inside) > c.priority:
                c = Candidate(c.start, c.end, "NAME", max(inside))
        out.append(c)
    return out


_INITIAL_BEFORE = re.compile(r"(?:^|(?<=[\s(,:]))[A-Z]\.?[ \t]$")


def with_initial(text: str, c: Candidate) -> Candidate:
    """ "A. Whitfield", "G Tan": an initial right before a found surname belongs to the name."""
    if c.type != "NAME":
        return c
    m = _INITIAL_BEFORE.search(text[max(0, c.start - 4):c.start])
    if m and text[c.start - len(m.group()):c.start].strip() not in ("A", "I"):
        return Candidate(c.start - len(m.group()), c.end, c.type, c.priority)
    if m and text[c.start - len(m.group()):c.start] == "A. ":
        return Candidate(c.start - 3, c.end, c.type, c.priority)
    return c
