"""Names that only their position shows: chat speakers, signatures, greetings and vocatives.

    find_chat_names(text) -> [Candidate] typed NAME

"Hamza: yaar bilal ka number bhejna" (a speaker label), "Best,\nLucía" (a signature under a
closing), "Tanvir, your login has been reset" (a vocative opening a line), "hey its aoife" and
"thx sarah" (lower-case names after a greeting). An NER model trained on prose misses these: the
name stands alone, without the sentence around it that the model learnt from.
"""

from __future__ import annotations

import re
from typing import Iterator

from .lexicon import CREDENTIALS, NOT_NAMES, ROLE_WORDS, TITLES, census_names
from .patterns import Candidate

P_CHAT_NAME = 58  # above the NER's names (57): the position is stronger evidence than the model
_NAME = r"[A-ZÀ-ÖØ-ÞĀ-ſ][\w'’-]+"
_TIMESTAMP = r"(?:\[[^\]\n]{4,24}\][ \t]*)?"
_SPEAKER = re.compile(rf"^{_TIMESTAMP}((?:{_NAME}[ \t]){{0,2}}{_NAME})(?:[ \t]\([^)\n]*\))?:[ \t]", re.M)
_CLOSING = re.compile(
    r"^(?:best|best wishes|kind regards|regards|warm regards|many thanks|thanks|thank you|cheers|yours|"
    r"yours sincerely|sincerely|love|cordiali saluti|saluti|un saludo|saludos|cordialement|groeten|"
    r"met vriendelijke groet|mit freundlichen grüßen|viele grüße|lg|xx+|x)[,!.]?[ \t]*\n"
    rf"((?:{_NAME}[ \t]){{0,3}}{_NAME})[ \t]*$",
    re.M | re.I,
)
_VOCATIVE = re.compile(rf"^({_NAME})(?:,[ \t]|[ \t]-[ \t])", re.M)
# A lookahead, so that "hey its aoife" tries "its aoife" after "hey its" fails.
_GREETING = re.compile(
    r"(?=\b(?:hi|hey+|hello|thx|thanks|ty|cheers|tell|ask|its|it's|auntie|aunty|uncle|"
    r"name is|i'm|im)[ \t]+([a-z][a-z'’-]{2,}(?:[ \t]+o['’][a-z]+)?)\b(?![ \t]*[a-z]+[ \t]+(?:is|are)\b))"
)
# "ahmed's number is ...": a lower-case possessive before what people ask each other for.
_POSSESSIVE = re.compile(r"\b([a-z]{3,})['’]s[ \t]+(?:number|phone|mobile|address|email|birthday|house|place)\b")
# Capitalised words that open a line and are not people.
_OPENERS = NOT_NAMES | {
    "However", "Also", "Ok", "Okay", "Sorry", "Well", "So", "Sure", "Great", "Perfect", "Noted",
    "Apologies", "Update", "Reminder", "Attached", "Overall", "Separately", "Additionally", "Best",
    "Cheers", "Yours", "Hello", "Hi", "Hey", "Morning", "Afternoon", "Evening", "Team", "Everyone",
    "Folks", "Guys", "Customer", "Agent", "Cliente", "Sent", "Subject", "Date", "Mobile", "Tel",
    "Unfortunately", "Meanwhile", "Finally", "Otherwise", "Lol", "Omg", "Btw", "Fyi", "Welcome",
}
_KIN = {"abuelo", "abuela", "oma", "opa", "nonna", "nonno", "coach", "auntie", "aunty", "uncle", "mum",
        "mom", "dad", "nana", "grandma", "grandpa", "tante", "onkel", "tía", "tío", "tia", "tio"}
_NOT_LOWER_NAMES = {"the", "you", "and", "not", "off", "out", "back", "here", "there", "fine", "good",
                    "all", "sorry", "sure", "done", "home", "late", "free", "busy", "going", "coming",
                    "ok", "okay", "lol", "guys", "everyone", "team", "mate", "babe", "love", "bro", "sis",
                    "its", "it's", "im", "i'm", "name", "just", "still", "really", "very", "so", "too",
                    "for", "again", "this", "that", "what", "who", "his", "her", "our", "your",
                    "my", "mum", "mom", "dad", "everybody", "both", "man", "girl", "boy", "someone",
                    "urgent", "important", "ready", "tired", "sick", "outside", "nearly", "almost"}


def find_chat_names(text: str) -> Iterator[Candidate]:
    firsts, lasts = census_names()
    speakers = list(_SPEAKER.finditer(text))
    chat = len(speakers) >= 2 or bool(re.match(r"\[", text))
    for m in speakers:
        span = _strip_kin(text, m.start(1), m.end(1))
        if span and _person_like(text[span[0]:span[1]], firsts, lasts, chat):
            yield Candidate(*span, "NAME", P_CHAT_NAME)
    for m in _CLOSING.finditer(text):
        if all(w not in _OPENERS and w.lower() not in TITLES for w in m.group(1).split()):
            yield Candidate(m.start(1), m.end(1), "NAME", P_CHAT_NAME)
    for m in _VOCATIVE.finditer(text):
        word = m.group(1)
        if word not in _OPENERS and word.lower() not in ROLE_WORDS and not word.endswith("ly") and word not in CREDENTIALS:
            yield Candidate(m.start(1), m.end(1), "NAME", P_CHAT_NAME - 2)
    for m in [*_GREETING.finditer(text), *_POSSESSIVE.finditer(text)]:
        word = m.group(1)
        if (word not in _NOT_LOWER_NAMES and word not in ROLE_WORDS and word.title() not in NOT_NAMES
                and (word.title() in firsts or len(word) >= 3)):
            yield Candidate(m.start(1), m.end(1), "NAME", P_CHAT_NAME - 2)


def _strip_kin(text: str, start: int, end: int) -> tuple[int, int] | None:
    """ "Abuelo Manolo" -> "Manolo": a kinship word or title before a speaker's name is not the name."""
    words = [(m.start() + start, m.end() + start, m.group()) for m in re.finditer(r"\S+", text[start:end])]
    while words and (words[0][2].lower() in _KIN or words[0][2].lower() in TITLES):
        words.pop(0)
    return (words[0][0], words[-1][1]) if words else None


def _person_like(label: str, firsts: frozenset[str], lasts: frozenset[str], chat: bool) -> bool:
    words = label.split()
    if any(w in _OPENERS or w.lower() in ROLE_WORDS or w.isupper() for w in words):
        return False
    return chat or any(w in firsts or w in lasts for w in words)
