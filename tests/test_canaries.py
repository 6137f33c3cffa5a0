"""Canary arithmetic: look-alikes keep the secret's shape, exposure by rank and by extrapolation."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from tunevault.server.privacy.canaries import (
    CHANCE_BITS,
    Canary,
    candidates_for,
    exposure,
    look_alike,
    make_canaries,
)


def test_look_alikes_keep_each_characters_class_and_never_repeat_the_secret() -> None:
    rng = random.Random(1)
    secret = "AB-12 7c"
    canary = Canary("R1", secret, 1, user_supplied=True)
    found = candidates_for(canary, 50, rng)
    assert len(found) == 50 == len(set(found)) and secret not in found
    for candidate in found:
        assert len(candidate) == len(secret)
        for a, b in zip(candidate, secret):
            assert (a.isdigit(), a.isupper(), a.islower()) == (b.isdigit(), b.isupper(), b.islower())
            if not b.isalnum():
                assert a == b
    assert look_alike("----", rng) == "----"


def test_make_canaries_uses_given_secrets_first_then_random_ones() -> None:
    canaries = make_canaries([1, 4, 16], ["MRN 0048213"], random.Random(0))
    assert [c.repetitions for c in canaries] == [1, 4, 16]
    assert canaries[0].secret == "MRN 0048213" and canaries[0].user_supplied
    assert not canaries[1].user_supplied and len(canaries[1].secret.split()) == 9
    assert canaries[1].secret in canaries[1].answer() and canaries[1].record in canaries[1].question
    assert len({c.record for c in canaries}) == 3


def test_exposure_by_rank_spans_zero_to_log2_of_the_candidates() -> None:
    candidates = [float(x) for x in range(1, 100)]  # 99 candidates, losses 1..99
    best = exposure(0.5, candidates)
    assert best.rank == 1 and best.exposure_bits == pytest.approx(math.log2(100)) == pytest.approx(best.max_bits)
    worst = exposure(1000.0, candidates)
    assert worst.rank == 100 and worst.exposure_bits == pytest.approx(0.0)
    middle = exposure(49.5, candidates)
    assert middle.rank == 50 and middle.exposure_bits == pytest.approx(1.0)


def test_exposure_of_a_secret_drawn_like_its_candidates_averages_chance() -> None:
    rng = random.Random(7)
    bits = []
    for _ in range(2000):
        losses = [rng.gauss(30.0, 2.0) for _ in range(200)]
        bits.append(exposure(losses[0], losses[1:]).exposure_bits)
    assert statistics.fmean(bits) == pytest.approx(CHANCE_BITS, abs=0.1)


def test_extrapolation_follows_a_normal_tail_beyond_the_sample() -> None:
    rng = random.Random(3)
    losses = [rng.gauss(30.0, 2.0) for _ in range(5000)]
    far = exposure(30.0 - 6 * 2.0, losses)  # six standard deviations better than a look-alike
    assert far.rank == 1
    expected = -math.log2(0.5 * math.erfc(6 / math.sqrt(2)))  # about 29.6 bits
    assert far.extrapolated_bits == pytest.approx(expected, rel=0.1)
    assert far.extrapolated_bits > far.exposure_bits
    assert exposure(30.0, losses).extrapolated_bits == pytest.approx(1.0, abs=0.1)  # the median: half as likely
