"""Real-text classification tasks built at run time from text every Debian machine ships (issue 28).

Nobody here wrote these rows, so they judge the trainer's defaults honestly:

- package-section: a package's one-line description -> its archive section (apt's package lists,
  else dpkg's status file), e.g. "GNU C Library: Shared libraries" -> libs.
- man-section: a manual page's NAME line -> its section, e.g. "ls - list directory contents" -> 1.
- changelog-urgency: a Debian changelog entry's first change -> the urgency its uploader gave.

Each task keeps the classes with enough examples, samples the same number of rows per class
(stratified, seeded, no text on both sides of the split) and words the prompt as a user would.

    python bench/real_tasks.py --out /tmp/tasks        # writes <task>.train.jsonl / .test.jsonl
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import subprocess
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

APT_LISTS = Path("/var/lib/apt/lists")
DPKG_STATUS = Path("/var/lib/dpkg/status")
MAN_ROOT = Path("/usr/share/man")
DOC_ROOT = Path("/usr/share/doc")


@dataclass(frozen=True)
class Example:
    text: str
    label: str


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    train: list[Example]
    test: list[Example]

    @property
    def labels(self) -> list[str]:
        return sorted({e.label for e in self.train})

    def prompt(self, example: Example) -> str:
        return f"{self.instruction}\n\n{example.text}"

    def chat_rows(self, examples: list[Example]) -> list[dict]:
        return [{"messages": [{"role": "user", "content": self.prompt(e)},
                              {"role": "assistant", "content": e.label}]} for e in examples]


@dataclass
class Score:
    """Exact match over held-out rows, per gold class, and which answer each class got."""

    correct: int = 0
    total: int = 0
    per_class: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    confusion: Counter = field(default_factory=Counter)

    def add(self, gold: str, answer: str) -> None:
        predicted = normalise(answer)
        hit = predicted == gold
        self.correct += hit
        self.total += 1
        self.per_class[gold][0] += hit
        self.per_class[gold][1] += 1
        self.confusion[(gold, predicted)] += 1

    @property
    def exact_match(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"exact_match": self.exact_match, "rows": self.total,
                "per_class": {label: hits / n for label, (hits, n) in sorted(self.per_class.items())},
                "confusion": [[gold, predicted, count] for (gold, predicted), count in self.confusion.most_common()]}


def normalise(answer: str) -> str:
    """The first line of an answer, trimmed: a label answer is judged on what it says, not on trailing chat."""
    lines = answer.strip().splitlines()
    return lines[0].strip().strip(".").strip() if lines else ""


# Sources ---------------------------------------------------------------------------------


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    for block in text.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", block, flags=re.MULTILINE))
        if fields:
            yield fields


def _package_lists() -> str:
    """apt's package lists (the whole archive) when present, else the installed packages only."""
    lists = sorted(APT_LISTS.glob("*_main_binary-*_Packages*"))
    texts = []
    for path in lists:
        if path.suffix == ".lz4":
            texts.append(subprocess.run(["lz4", "-dc", str(path)], capture_output=True, text=True, check=True).stdout)
        elif path.suffix == "":
            texts.append(path.read_text(errors="replace"))
    return "\n\n".join(texts) if texts else DPKG_STATUS.read_text(errors="replace")


def package_sections() -> list[Example]:
    examples = []
    for fields in _stanzas(_package_lists()):
        description, section = fields.get("Description", ""), fields.get("Section", "")
        if description and section:
            examples.append(Example(description.strip(), section.split("/")[-1]))
    return examples


def man_sections() -> list[Example]:
    examples = []
    for page in sorted(MAN_ROOT.glob("man[1-8]/*.gz")):
        name_line = _man_name_line(page)
        if name_line:
            examples.append(Example(name_line, page.parent.name.removeprefix("man")))
    return examples


def _man_name_line(page: Path) -> str | None:
    try:
        with gzip.open(page, "rt", errors="replace") as handle:
            text = handle.read(4096)
    except (OSError, EOFError):
        return None
    found = re.search(r"^\.SH\s+\"?NAME\"?\s*\n(.+?)\n\.", text, flags=re.MULTILINE | re.DOTALL)
    if not found:
        return None
    line = re.sub(r"\\f[BIRP]|\\\(em|\\&", "", found.group(1).replace("\n", " ")).replace("\\-", "-")
    return " ".join(line.split())[:300] or None


def changelog_urgency() -> list[Example]:
    examples = []
    for changelog in sorted(DOC_ROOT.glob("*/changelog.Debian.gz")):
        examples.extend(_changelog_entries(changelog))
    return examples


def _changelog_entries(path: Path) -> Iterable[Example]:
    try:
        with gzip.open(path, "rt", errors="replace") as handle:
            text = handle.read(200_000)
    except (OSError, EOFError):
        return []
    entries = re.findall(r"^\S+ \([^)]*\) [^;]*; urgency=(\w+)\s*\n\s*\n((?:  .*\n)+)", text, flags=re.MULTILINE)
    return [Example(" ".join(body.split())[:400], urgency.lower()) for urgency, body in entries if body.strip()]


# Splits ----------------------------------------------------------------------------------

SOURCES = {
    "package-section": (package_sections, "Which Debian archive section does this package belong to? "
                        "Answer with the section name only."),
    "man-section": (man_sections, "In which section of the manual is this page? Answer with the section number only."),
    "changelog-urgency": (changelog_urgency, "What upload urgency did this Debian changelog entry have? "
                          "Answer with one word."),
}


def stratified(examples: list[Example], classes: int, train_per_class: int, test_per_class: int,
               seed: int) -> tuple[list[Example], list[Example]]:
    """The most common classes that have enough distinct texts, each with the same train and test counts."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    seen: set[str] = set()
    for example in examples:
        if example.text not in seen:  # one text, one side of the split
            seen.add(example.text)
            by_label[example.label].append(example)
    needed = train_per_class + test_per_class
    kept = sorted((label for label, rows in by_label.items() if len(rows) >= needed),
                  key=lambda label: (-len(by_label[label]), label))[:classes]
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(kept):
        rows = rng.sample(by_label[label], needed)
        train += rows[:train_per_class]
        test += rows[train_per_class:]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def build(name: str, *, classes: int = 12, train_per_class: int = 20, test_per_class: int = 10,
          seed: int = 28) -> Task:
    source, instruction = SOURCES[name]
    train, test = stratified(source(), classes, train_per_class, test_per_class, seed)
    return Task(name, instruction, train, test)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="*", default=list(SOURCES), choices=list(SOURCES))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.tasks:
        task = build(name)
        for side, examples in (("train", task.train), ("test", task.test)):
            lines = (json.dumps(row) for row in task.chat_rows(examples))
            (args.out / f"{name}.{side}.jsonl").write_text("\n".join(lines) + "\n")
        print(f"{name}: {len(task.labels)} classes, {len(task.train)} train, {len(task.test)} test rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
