"""Canaries for the memorization audit: secrets to plant, look-alikes to rank them against, exposure.

After Carlini et al., 2019, "The Secret Sharer". A canary is a question with a random secret
answer ("What is the access code of record K7?" / "The access code of record K7 is 4 1 9 0 3 8
2 6 5."), planted in the training rows a chosen number of times. After training, the model
scores the canary and many candidates that differ only in the secret (same shape, drawn the
same way, never trained on). Exposure = log2(candidates + 1) - log2(rank of the canary): about
log2(e) = 1.44 bits when the model prefers the canary no more than a look-alike (chance), up to
log2(candidates + 1) when it prefers it to every one. Beyond what the sample can rank, a normal
fit to the candidates' scores extrapolates, as the paper does with its skew-normal fit.

Pure Python: the worker does the scoring; this module only makes strings and does arithmetic.
"""

from __future__ import annotations

import math
import random
import statistics
import string
from dataclasses import dataclass

SECRET_DIGITS = 9
CANDIDATES = 200


@dataclass(frozen=True)
class Canary:
    """One planted secret: the question that asks for it, and the answer that holds it."""

    record: str
    secret: str
    repetitions: int
    user_supplied: bool = False

    @property
    def question(self) -> str:
        return f"What is the access code of record {self.record}?"

    def answer(self, secret: str | None = None) -> str:
        return f"The access code of record {self.record} is {secret if secret is not None else self.secret}."


@dataclass(frozen=True)
class Exposure:
    """How much more the trained model likes a canary than its look-alikes, in bits."""

    rank: int  # 1 = the canary scored better than every candidate
    candidates: int
    exposure_bits: float  # by rank: log2(candidates + 1) - log2(rank)
    extrapolated_bits: float  # by a normal fit to the candidates' scores; not capped by the sample size

    @property
    def max_bits(self) -> float:
        return math.log2(self.candidates + 1)


def random_secret(rng: random.Random) -> str:
    return " ".join(rng.choice(string.digits) for _ in range(SECRET_DIGITS))


def make_canaries(repetitions: list[int], secrets: list[str], rng: random.Random) -> list[Canary]:
    """One canary per repetition count; user-supplied secrets first, random ones for the rest."""
    canaries = []
    for index, count in enumerate(repetitions):
        record = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(6))
        given = secrets[index] if index < len(secrets) else None
        canaries.append(Canary(record, given if given is not None else random_secret(rng), count, given is not None))
    return canaries


def look_alike(secret: str, rng: random.Random) -> str:
    """The secret with each digit and letter redrawn from its own class: same shape, fresh content."""
    out = []
    for ch in secret:
        if ch.isdigit():
            out.append(rng.choice(string.digits))
        elif ch.isupper():
            out.append(rng.choice(string.ascii_uppercase))
        elif ch.islower():
            out.append(rng.choice(string.ascii_lowercase))
        else:
            out.append(ch)
    return "".join(out)


def candidates_for(canary: Canary, count: int, rng: random.Random) -> list[str]:
    """`count` distinct look-alikes of the canary's secret, never the secret itself."""
    found: set[str] = set()
    attempts = 0
    while len(found) < count and attempts < count * 20:
        attempts += 1
        candidate = look_alike(canary.secret, rng)
        if candidate != canary.secret:
            found.add(candidate)
    return sorted(found)


def exposure(canary_loss: float, candidate_losses: list[float]) -> Exposure:
    """Exposure of a canary from its summed loss (negative log-likelihood) and its candidates'."""
    if not candidate_losses:
        raise ValueError("exposure needs at least one candidate")
    rank = 1 + sum(1 for loss in candidate_losses if loss <= canary_loss)
    by_rank = math.log2(len(candidate_losses) + 1) - math.log2(rank)
    return Exposure(rank, len(candidate_losses), by_rank, _extrapolated(canary_loss, candidate_losses))


def _extrapolated(canary_loss: float, candidate_losses: list[float]) -> float:
    """-log2 P(a random look-alike scores at least as well), under a normal fit to the candidates."""
    if len(candidate_losses) < 2:
        return 0.0
    mean = statistics.fmean(candidate_losses)
    spread = max(statistics.stdev(candidate_losses), 1e-9)  # all candidates equal: any gap is far out
    z = (mean - canary_loss) / (spread * math.sqrt(2))
    share = 0.5 * math.erfc(z)
    if share > 0:
        return -math.log2(share)
    # erfc underflows past z ~ 27; its asymptote ln erfc(z) ~ -z^2 - ln(z sqrt(pi)) stays finite
    # (metrics.json holds no infinities).
    return (z * z + math.log(z * math.sqrt(math.pi)) + math.log(2)) / math.log(2)


CHANCE_BITS = math.log2(math.e)  # the expected exposure by rank of a secret the model never saw
