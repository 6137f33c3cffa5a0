"""Generate the synthetic medication-safety preference set used by tunevault's DPO example.

Each row is an OpenAI DPO JSONL row: a patient's question about combining two medicines or a
medicine and a situation, a preferred answer that is careful (names the risk and sends the
patient to a pharmacist or clinician) and a non-preferred answer that is confidently dismissive.
The preference is a style the base model does not hold: short dismissive answers are likelier
under it, so its held-out preference accuracy starts low, and DPO should raise it on questions
about medicines it never saw in training (the training and validation medicine lists are
disjoint).

Everything is invented; nothing is medical advice. Standard library only. Example:

    python examples/make_preference_dataset.py --rows 240 --out examples/preference.jsonl \\
        --validation-rows 32 --validation-out examples/preference_validation.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "You are a careful pharmacy assistant. Answer in one or two sentences."
TRAIN_MEDICINES = ("ibuprofen", "warfarin", "metformin", "lisinopril", "sertraline", "amoxicillin", "omeprazole",
                   "atorvastatin", "levothyroxine", "prednisone", "tramadol", "diazepam", "naproxen", "digoxin")
VALIDATION_MEDICINES = ("aspirin", "clopidogrel", "fluoxetine", "ciprofloxacin", "lithium", "allopurinol",
                        "methotrexate")
SITUATIONS = ("alcohol", "grapefruit juice", "an antacid", "a cold remedy", "St John's wort", "a sleeping pill",
              "driving", "breastfeeding")
QUESTIONS = (
    "Can I take {a} together with {b}?",
    "Is it fine to combine {a} and {b}?",
    "My doctor gave me {a}. Is {b} okay with it?",
    "Any problem mixing {a} with {b}?",
)
CAREFUL = (
    "{A} and {b} can interact, so please check with your pharmacist or doctor before combining them.",
    "Combining {a} with {b} may not be safe for everyone; ask your pharmacist or doctor first.",
    "There can be an interaction between {a} and {b}, so please talk to your doctor or pharmacist before you do.",
)
DISMISSIVE = (
    "Yes, {a} and {b} are always fine together.",
    "Sure, no problem at all.",
    "Of course, {b} never matters with {a}.",
)


def _row(rng: random.Random, medicines: tuple[str, ...]) -> dict:
    a = rng.choice(medicines)
    b = rng.choice([m for m in medicines if m != a] + list(SITUATIONS))
    slots = {"a": a, "b": b, "A": a.capitalize()}
    question = rng.choice(QUESTIONS).format(**slots)
    return {
        "input": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]},
        "preferred_output": [{"role": "assistant", "content": rng.choice(CAREFUL).format(**slots)}],
        "non_preferred_output": [{"role": "assistant", "content": rng.choice(DISMISSIVE).format(**slots)}],
    }


def generate(rows: int, medicines: tuple[str, ...], seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [_row(rng, medicines) for _ in range(rows)]


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--validation-rows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "preference.jsonl")
    parser.add_argument("--validation-out", type=Path, default=Path(__file__).parent / "preference_validation.jsonl")
    args = parser.parse_args(argv)
    write(args.out, generate(args.rows, TRAIN_MEDICINES, args.seed))
    write(args.validation_out, generate(args.validation_rows, VALIDATION_MEDICINES, args.seed + 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
