"""What may be streamed of a completion being generated: the pieces always join to the final answer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunevault.server.inference.streamed_text import StreamedText, cut_at_stop, settled

# A toy vocabulary with the hazards of a real one: spaces, a stop string split over tokens, punctuation.
VOCAB = ["Hel", "lo", " ", "wor", "ld", ",", "\n", "EN", "D", "###", "é", " ok"]


def _decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids)


def _stream(ids: list[int], stop: list[str]) -> tuple[list[str], str]:
    pieces: list[str] = []
    text = StreamedText(_decode, stop, pieces.append)
    for i in ids:
        text.add([i])
        if cut_at_stop(_decode(text.ids), stop)[1]:
            break  # generate() stops at a stop string
    final = cut_at_stop(_decode(text.ids), stop)[0]
    text.finish(final)
    return pieces, final


@given(st.lists(st.integers(0, len(VOCAB) - 1), max_size=40), st.sampled_from([[], ["END"], ["###", "\n\n"]]))
def test_the_pieces_join_to_the_final_completion_and_never_hold_a_stop_string(ids: list[int], stop: list[str]) -> None:
    pieces, final = _stream(ids, stop)
    assert "".join(pieces) == final
    assert all(piece for piece in pieces)
    assert not any(word in "".join(pieces) for word in stop)


def test_the_newest_tokens_text_and_a_possible_stop_string_are_held_back() -> None:
    assert settled("Hello wor", "Hello ", []) == "Hello"  # the space may still be cleaned up
    assert settled("Hello EN", "Hello EN", ["END"]) == "Hello "  # "EN" may become "END"
    assert settled("Hello END more", "Hello END", ["END"]) == "Hello "  # a stop string ends the completion
    assert settled("caf\ufffd", "caf\ufffd", []) == "caf"  # half a character


def test_a_long_word_without_spaces_still_streams() -> None:
    pieces, final = _stream([0, 1, 0, 1, 0, 1], [])
    assert len(pieces) >= 3 and "".join(pieces) == final == "HelloHelloHello"
