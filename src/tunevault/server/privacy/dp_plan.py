"""DP-SGD planning and accounting: the noise for a target epsilon, the epsilon a run spent, and the preflight.

Importing this module is cheap (no torch); calling anything here imports Opacus, whose package
imports torch (about 7 s on these CPUs), so the API process must call it from a subprocess (the
job validation step) or not at all. Every figure comes from Opacus' own accountants, so what the
preflight promises, the worker reports and a test recomputes agree by construction.

The unit of privacy is one training row: a person with several rows is protected for each row,
not as a whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tunevault.server.contract import hyperparameters as hp

# Noise on each step's mean gradient, per coordinate and in units of the clipping norm, is
# noise_multiplier / expected_batch. Above this, DP fine-tuning learns little in the steps a job
# has: the DP LLM fine-tuning results that match non-private ones run at about 0.001-0.003
# (e.g. Li et al. 2022: batches of ~1000 at noise ~1). bench/dp_bench.py on this CPU at epsilon
# 8, 12 steps, eval loss on 2,000 rows against the same job without DP: at 0.00013-0.00014
# (100,000 rows, an expected batch of 4,096; PRV, RDP) -6.6%, +10.6% and -0.7% on three seeds;
# at 0.00027 (50,000 rows, 2,048) +4.9%, +18.4% and +18.7% on three; at 0.00056 (20,000 rows,
# 1,024; 100 eval rows, which move such a gap by about 6 points) +5%, +35% and +35%; at 0.0021
# (10,000 rows, 256, 30 steps) it learnt, to 0.45, where the job without DP was at 0.27 by step
# 15; at 0.0042 (a batch of 128) it was still at 4.0 where non-DP reached 0.61. A rule of thumb,
# stated with its numbers: above this it warns that DP will learn little; below it, DP learns,
# and nearer 0.0001-0.0003 it keeps up on some data orders and not on others.
NOISE_PER_BATCH_WARN = 0.01
SUGGESTION_FACTORS = (2, 4, 8, 16, 32, 64)  # the changes tried, as multiples of the current value
MIN_USEFUL_STEPS = 10  # a suggestion that leaves fewer optimizer steps than this would not learn either


@dataclass(frozen=True)
class DPPlan:
    noise_multiplier: float
    sample_rate: float  # expected batch / rows: each row's chance of being in a step (Poisson)
    steps: int
    epsilon: float  # spent after all steps (at most the target when one was given)
    delta: float
    accountant: str
    rows: int
    expected_batch: int
    noise_per_batch: float  # noise_multiplier / expected_batch, see NOISE_PER_BATCH_WARN
    warnings: list[str] = field(default_factory=list)
    suggestion: str = ""  # the smallest change that brings noise_per_batch under the bar; "" if none needed


def make_accountant(name: str) -> Any:
    """A fresh Opacus accountant: "rdp" (RDPAccountant) or "prv" (PRVAccountant)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountants = {"rdp": RDPAccountant, "prv": PRVAccountant}
    if name not in accountants:
        raise ValueError(f"unknown DP accountant {name!r}; known: {', '.join(accountants)}")
    return accountants[name]()


def epsilon_spent(accountant: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon after `steps` Poisson-sampled Gaussian steps, as Opacus' accountant computes it."""
    if steps <= 0:
        return 0.0
    counter = make_accountant(accountant)
    # The accountants keep exactly this history when stepped `steps` times with the same values.
    counter.history = [(noise_multiplier, sample_rate, steps)]
    return float(counter.get_epsilon(delta=delta))


def noise_for_epsilon(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                      accountant: str = "rdp", tolerance: float = 0.01) -> float:
    """The smallest noise multiplier (within `tolerance` of epsilon, relative) that spends at most target_epsilon.

    Raises ValueError when no noise under Opacus' cap reaches the target (epsilon far too small).
    """
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant,
                                      epsilon_tolerance=max(1e-3, tolerance * target_epsilon)))


def dp_preflight(
    rows: int,
    expected_batch: int,
    steps: int,
    *,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float,
    accountant: str = "rdp",
) -> DPPlan:
    """The DP plan for a job, and plain warnings (with numbers) when it cannot learn much.

    rows: training rows (after the validation split); expected_batch: batch_size x
    gradient_accumulation_steps; steps: optimizer steps. Give target_epsilon or noise_multiplier.
    """
    if rows < 1 or expected_batch < 1 or steps < 1:
        raise ValueError("rows, expected_batch and steps must be positive")
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ValueError("give exactly one of target_epsilon and noise_multiplier")
    batch = min(expected_batch, rows)
    rate = batch / rows
    if target_epsilon is not None:
        noise = noise_for_epsilon(target_epsilon, delta, rate, steps, accountant)
    else:
        noise = float(noise_multiplier)  # type: ignore[arg-type]
    epsilon = epsilon_spent(accountant, noise, rate, steps, delta)
    plan = DPPlan(noise, rate, steps, epsilon, delta, accountant, rows, batch, noise / batch)

    if expected_batch > rows:
        plan.warnings.append(f"the expected batch ({expected_batch}) is larger than the {rows} training rows; "
                             f"every row is in every step (sample rate 1), which gets no privacy from sampling")
    if delta >= 1 / rows:
        plan.warnings.append(f"dp_delta {delta:g} is not below 1/N = {1 / rows:.3g}: a mechanism that published one "
                             f"row at random would meet it; use at most {0.1 / rows:.1g}")
    noisy, short = plan.noise_per_batch > NOISE_PER_BATCH_WARN, steps < MIN_USEFUL_STEPS
    if not (noisy or short):
        return plan
    setting = (f"with {rows:,} training rows, an expected batch of {batch} (sample rate {rate:.3g}) and {steps:,} "
               f"steps ({steps * rate:.3g} epochs), ")
    setting += (f"epsilon {target_epsilon:g} at delta {delta:.2g} needs noise multiplier {noise:.3g}"
                if target_epsilon is not None else
                f"noise multiplier {noise:g} spends epsilon {epsilon:.3g} at delta {delta:.2g}")
    problems = []
    if noisy:
        problems.append(f"the noise on each step's mean gradient is {plan.noise_per_batch:.3g} x the clipping norm per "
                        f"coordinate, {plan.noise_per_batch / NOISE_PER_BATCH_WARN:.1f}x the {NOISE_PER_BATCH_WARN:g} "
                        f"under which DP fine-tuning usually stays close to non-private training")
    if short:
        problems.append(f"{steps} optimizer steps are too few to learn from (fewer than {MIN_USEFUL_STEPS}): DP needs "
                        f"a large batch and enough steps at once")
    plan.warnings.append(f"too little data for DP to learn much: {setting}; " + "; and ".join(problems))
    target = target_epsilon if target_epsilon is not None else epsilon
    # The advice searches with RDP whatever the job's accountant: it makes dozens of accountant
    # calls, a PRV call takes seconds (71 s for the whole search on a 108-row job, against 11 s),
    # and RDP's epsilon is the higher of the two, so a change it clears also clears under PRV.
    return DPPlan(**{**plan.__dict__, "suggestion": _suggest(rows, batch, steps, target, delta, "rdp")})


def _clears(rows: int, batch: int, steps: int, epsilon: float, delta: float, accountant: str) -> bool:
    """Whether a setting's noise for `epsilon` is at most NOISE_PER_BATCH_WARN x batch.

    Epsilon falls as the noise grows, so this is one accountant call at exactly that noise
    instead of a search for the noise.
    """
    if batch > rows or steps < MIN_USEFUL_STEPS:
        return False
    try:
        return epsilon_spent(accountant, NOISE_PER_BATCH_WARN * batch, batch / rows, steps, delta) <= epsilon
    except (ValueError, ArithmeticError):  # the accountant gives up on extreme settings: not a way out
        return False


def _first_factor(clears_at: Any) -> int | None:
    return next((k for k in SUGGESTION_FACTORS if clears_at(k)), None)


def _suggest(rows: int, batch: int, steps: int, epsilon: float, delta: float, accountant: str) -> str:
    """One sentence: each single change that clears the bar, the smallest (as a multiple) first.

    Rows, batch and steps are tried in doublings up to 64x, keeping the number of epochs where
    the change is not the epochs themselves; the epsilon and the rows-with-batch figures are
    exact. Delta stays as it is (the default for more rows is the same 1e-5).
    """
    rate = batch / rows
    options: list[tuple[float, str]] = []
    if steps >= MIN_USEFUL_STEPS:
        # k x the rows with a k x larger batch keeps the sample rate and steps, so the noise
        # multiplier stays and noise/batch falls by k exactly.
        noise = noise_for_epsilon(epsilon, delta, rate, steps, accountant)
        k = max(2, math.ceil(noise / batch / NOISE_PER_BATCH_WARN))
        options.append((k, f"{rows * k:,} training rows with an expected batch of {batch * k:,} ({k}x both, same steps)"))
    found = _first_factor(lambda k: _clears(rows, batch * k, max(1, math.ceil(steps / k)), epsilon, delta, accountant))
    if found:
        options.append((found, f"an expected batch of {batch * found:,} (batch_size x gradient_accumulation_steps, "
                               f"{found}x) over the same epochs ({max(1, math.ceil(steps / found)):,} steps)"))
    found = _first_factor(lambda k: _clears(rows * k, batch, steps * k, epsilon, delta, accountant))
    if found:
        options.append((found, f"{rows * found:,} training rows ({found}x) with the same batch and epochs"))
    # Fewer steps lower the noise; more steps are what a too-short plan lacks.
    change = (lambda k: steps * k) if steps < MIN_USEFUL_STEPS else (lambda k: steps // k)
    found = _first_factor(lambda k: _clears(rows, batch, change(k), epsilon, delta, accountant))
    if found:
        options.append((found, f"{change(found):,} steps instead of {steps:,} ({change(found) * rate:.3g} epochs)"))
    try:
        needed = epsilon_spent(accountant, NOISE_PER_BATCH_WARN * batch, rate, steps, delta)
    except (ValueError, ArithmeticError):
        needed = math.inf
    if needed <= 100 and steps >= MIN_USEFUL_STEPS:
        options.append((needed / epsilon, f"dp_epsilon {needed:.3g} (weaker privacy)"))
    if not options:
        return (f"no single change up to {SUGGESTION_FACTORS[-1]}x (rows, expected batch, steps or epsilon) is "
                "enough; combine more rows with a larger expected batch, or train without DP")
    options.sort(key=lambda option: option[0])
    return "smallest change that helps: " + options[0][1] + "".join(f"; or {text}" for _, text in options[1:])


def plan_for_job(requested: dict[str, Any] | None, train_rows: int, *, has_validation_file: bool = False) -> DPPlan | None:
    """The preflight for a CreateJob request (hyperparameters as given, rows of the training file); None without DP.

    Uses the same resolution of "auto" values as the worker, so the plan matches what it will
    train, up to rows the worker drops (too long, or with no answer token).
    """
    validated = hp.validate(requested)
    if not validated.dp:
        return None
    resolved = hp.resolve(validated, train_rows, has_validation_file=has_validation_file)
    fraction = resolved.validation_fraction
    rows = train_rows if has_validation_file else max(1, train_rows - hp.validation_split_size(train_rows, fraction))
    return plan_for(resolved, rows)


def plan_for(resolved: hp.ResolvedHyperparameters, train_rows: int) -> DPPlan:
    """The DP plan of a DP job's resolved settings over its training rows (after the validation split)."""
    assert resolved.dp_delta is not None and resolved.dp_accountant is not None, "not a DP job"
    return dp_preflight(
        train_rows, resolved.batch_size * resolved.gradient_accumulation_steps, resolved.max_steps,
        target_epsilon=resolved.dp_epsilon, noise_multiplier=resolved.dp_noise_multiplier,
        delta=resolved.dp_delta, accountant=resolved.dp_accountant,
    )
