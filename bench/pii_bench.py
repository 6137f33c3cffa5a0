"""PII benchmark: precision, recall and F1 per type of tunevault.server.privacy.pii.scrubber on labelled sets.

Sets (bench/data), synthetic clinical and legal text; one JSON object per line: {"text",
"entities": [{"start", "end", "type"}]}; rows without entities are hard negatives (eponyms,
drugs, lab values, scores, statutes, published case citations, ages under 90, bare years).
- pii_eval.jsonl, the development set: the first 217 rows were written before the scrubber, then
  three holdout sets were each written blind, scored once, and only then folded in here and used
  for fixes (first blind scores: P/R 0.975/0.937, 0.917/0.948, 0.893/0.870).
- pii_eval_holdout.jsonl: the fourth blind set, with other document styles, names, places and
  formats; it has never been used to change the scrubber.
- pii_blind_{email,contracts,chat,discharge}.jsonl (sets blind_*): four sets written blind on
  2026-12-04, mostly outside the US, built from marked-up sources by data/build_pii_blind.py; their
  genres, the conventions they add (ID, HEALTH_PLAN_ID, ACCOUNT for IBANs, PHONE/FAX/EMAIL for every
  number and address, organisation names and places inside them not PII, ...) and how they were
  written are in data/README_pii_sets.md. First scores, before any fix, scored once on
  2026-12-04 (precision / recall / covered recall, same type and IoU >= 0.5):
    blind_email      0.802 / 0.643 / 0.670   (132 rows, 258 entities)
    blind_contracts  0.680 / 0.562 / 0.558   (146 rows, 276 entities)
    blind_chat       0.777 / 0.403 / 0.420   (139 rows, 181 entities)
    blind_discharge  0.728 / 0.605 / 0.621   (134 rows, 248 entities)
- pii_blind_{intake,casework}.jsonl (sets blind_intake, blind_casework): a second blind round written
  on 2026-12-05 (clinic intake, triage, pharmacy and lab messages; legal casework), built by
  data/build_pii_blind2.py; first score (main 82675bc) P/R/covered 0.751/0.532/0.541 intake,
  0.679/0.515/0.509 casework;
  rebuilt scrubber (ae7db78), scored once: 0.786/0.749/0.751 intake, 0.783/0.779/0.770 casework.

Matching rule (the headline figures): a finding matches a labelled entity when the TYPE IS THE
SAME and their character spans overlap with intersection-over-union >= 0.5; each entity matches
at most one finding (greedy, best overlap first). A finding of the wrong type counts as a false
positive and its entity as a miss. Also printed: the same figures for exact spans, and "covered",
the share of labelled entities whose characters are all inside some finding of any type (what a
reader of the redacted text would not see).

Labelling conventions: NAME excludes titles, credentials and the possessive 's; DATE is any
date more specific than a year (month+year counts; weekdays, times, durations and bare years do
not); AGE is the number of an age over 89; ADDRESS runs from the house number (or PO box) through
unit, city, state and ZIP when written together; LOCATION is a city, town or county named alone
(states and countries are not identifiers); ZIP is a ZIP code outside an address; identifiers
after a keyword ("MRN 123") exclude the keyword. Published case citations ("Roe v. Wade, 410 U.S.
113") and statutes are not identifiers; parties in a firm's own case captions are NAMEs.

The four pii_blind_{email,contracts,chat,discharge} sets are NO LONGER BLIND: the international
detection (Rampart NER, phonenumbers, GeoNames and the dedicated detectors in pii/) was built and
tuned on their errors after their first scores; their later figures are development figures.

Printed per set: a table per type (precision, recall, F1, covered) and one SUMMARY line; --out
writes all of it as JSON, with each set's file name and sha256.

    python bench/pii_bench.py [--errors] [--set blind_chat ...] [--rows 0] [--out bench/results/pii.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tunevault.server.privacy.pii import scrubber as pii  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
SETS = {"main": DATA / "pii_eval.jsonl", "holdout": DATA / "pii_eval_holdout.jsonl"}
# Written blind on 2026-12-04 (bench/data/README_pii_sets.md); built from pii_blind_src/ by build_pii_blind.py.
BLIND = ("email", "contracts", "chat", "discharge")
SETS.update({f"blind_{name}": DATA / f"pii_blind_{name}.jsonl" for name in BLIND})
# Second blind round, written 2026-12-05 (same README); built from pii_blind2_src/ by build_pii_blind2.py.
BLIND2 = ("intake", "casework")
SETS.update({f"blind_{name}": DATA / f"pii_blind_{name}.jsonl" for name in BLIND2})


def load(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def match(gold: list[dict], found: list[pii.Finding], exact: bool) -> tuple[set[int], set[int]]:
    """Indices of matched gold entities and matched findings under the rule in the docstring."""
    pairs = []
    for gi, g in enumerate(gold):
        for fi, f in enumerate(found):
            if f.type != g["type"]:
                continue
            score = 1.0 if (f.start, f.end) == (g["start"], g["end"]) else (0.0 if exact else iou((g["start"], g["end"]), (f.start, f.end)))
            if score >= 0.5:
                pairs.append((score, gi, fi))
    matched_g, matched_f = set(), set()
    for _, gi, fi in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if gi not in matched_g and fi not in matched_f:
            matched_g.add(gi)
            matched_f.add(fi)
    return matched_g, matched_f


def prf(tp: int, fp: int, fn: int) -> dict:
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 4)}


def evaluate(rows: list[dict], show_errors: bool) -> dict:
    texts = [r["text"] for r in rows]
    started = time.perf_counter()
    found_all = pii.scan_many(texts)
    seconds = time.perf_counter() - started
    tp, fp, fn, covered_by_type = Counter(), Counter(), Counter(), Counter()
    exact_tp = exact_found = 0
    covered = 0
    gold_total = 0
    errors = []
    for row, found in zip(rows, found_all):
        gold = row["entities"]
        gold_total += len(gold)
        mg, mf = match(gold, found, exact=False)
        eg, _ = match(gold, found, exact=True)
        exact_tp += len(eg)
        exact_found += len(found)
        for gi, g in enumerate(gold):
            (tp if gi in mg else fn)[g["type"]] += 1
            if any(f.start <= g["start"] and g["end"] <= f.end for f in found):
                covered += 1
                covered_by_type[g["type"]] += 1
            if gi not in mg:
                errors.append(f"  MISS {g['type']:<14} {row['text'][g['start']:g['end']]!r}  <- {row['text'][:90]!r}")
        for fi, f in enumerate(found):
            if fi not in mf:
                fp[f.type] += 1
                errors.append(f"  FP   {f.type:<14} {row['text'][f.start:f.end]!r}  <- {row['text'][:90]!r}")
    types = sorted(set(tp) | set(fp) | set(fn))
    result = {
        "rows": len(rows),
        "entities": gold_total,
        "per_type": {t: {**prf(tp[t], fp[t], fn[t]), "covered": round(covered_by_type[t] / (tp[t] + fn[t]), 4) if tp[t] + fn[t] else None}
                     for t in types},
        "overall": prf(sum(tp.values()), sum(fp.values()), sum(fn.values())),
        "overall_exact_span": prf(exact_tp, exact_found - exact_tp, gold_total - exact_tp),
        "covered_any_type": round(covered / gold_total, 4) if gold_total else 1.0,
        "scan_seconds": round(seconds, 3),
    }
    if show_errors:
        print("\n".join(errors))
    return result


def throughput(rows: list[dict], count: int) -> dict:
    """Rows per second of scrub_jsonl(redact) on a chat dataset built from the labelled texts."""
    texts = [r["text"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        with open(src, "w", encoding="utf-8") as handle:
            for i in range(count):
                question = texts[i % len(texts)]
                answer = texts[(i * 7 + 3) % len(texts)]
                handle.write(json.dumps({"messages": [
                    {"role": "system", "content": "You are a careful clinical and legal assistant."},
                    {"role": "user", "content": f"Summarise this note: {question}"},
                    {"role": "assistant", "content": f"Summary: {answer} Follow up as planned."},
                ]}) + "\n")
        started = time.perf_counter()
        report = pii.scrub_jsonl(src, dst, "redact")
        seconds = time.perf_counter() - started
    chars = sum(len(texts[i % len(texts)]) + len(texts[(i * 7 + 3) % len(texts)]) + 90 for i in range(count))
    return {"rows": count, "seconds": round(seconds, 2), "rows_per_second": round(count / seconds, 1),
            "seconds_per_1k_rows": round(seconds * 1000 / count, 2),
            "chars_per_second": round(chars / seconds), "rows_affected": report.rows_affected}


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (models loaded, every set scanned)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def table(name: str, result: dict) -> str:
    lines = [f"\n{name}: {result['rows']} rows, {result['entities']} labelled entities "
             f"(same type, IoU >= 0.5; cov: inside a finding of any type)",
             f"{'type':<16}{'n':>5}{'prec':>8}{'recall':>8}{'f1':>8}{'cov':>8}{'fp':>5}{'fn':>5}"]
    for t, m in result["per_type"].items():
        cov = f"{m['covered']:>8.3f}" if m["covered"] is not None else f"{'-':>8}"
        lines.append(f"{t:<16}{m['tp'] + m['fn']:>5}{m['precision']:>8.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{cov}{m['fp']:>5}{m['fn']:>5}")
    o, e = result["overall"], result["overall_exact_span"]
    lines.append(f"{'OVERALL':<16}{o['tp'] + o['fn']:>5}{o['precision']:>8.3f}{o['recall']:>8.3f}{o['f1']:>8.3f}{o['fp']:>5}{o['fn']:>5}")
    lines.append(f"{'exact spans':<16}{e['tp'] + e['fn']:>5}{e['precision']:>8.3f}{e['recall']:>8.3f}{e['f1']:>8.3f}{e['fp']:>5}{e['fn']:>5}")
    lines.append(f"covered by a finding of any type: {result['covered_any_type']:.3f}; scan time {result['scan_seconds']} s")
    return "\n".join(lines)


def summary(name: str, result: dict) -> str:
    """One line per set: the figures the issue's bar is stated in."""
    o = result["overall"]
    return (f"SUMMARY {name:<18} rows {result['rows']:>4}  entities {result['entities']:>4}  precision {o['precision']:.3f}  "
            f"recall {o['recall']:.3f}  f1 {o['f1']:.3f}  covered recall {result['covered_any_type']:.3f}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--errors", action="store_true", help="print every miss and false positive")
    parser.add_argument("--set", choices=sorted(SETS), action="append", help="only these sets (default: all)")
    parser.add_argument("--rows", type=int, default=2000, help="rows in the throughput dataset (0: skip)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    pii.scan("Warm-up: Dr. Ada Smith saw the patient.")
    results: dict = {"model_load_seconds": round(time.perf_counter() - started, 2)}
    for name, path in SETS.items():
        if args.set and name not in args.set:
            continue
        rows = load(path)
        if args.errors:
            print(f"\nerrors in {name} ({path.name}):")
        results[name] = evaluate(rows, args.errors)
        results[name]["file"] = path.name
        results[name]["sha256"] = sha256(path)
        print(table(name, results[name]))
    if args.rows:
        results["throughput"] = throughput(load(SETS["main"]) + load(SETS["holdout"]), args.rows)
        t = results["throughput"]
        print(f"\nthroughput: scrub_jsonl(redact) {t['rows']} chat rows in {t['seconds']} s = "
              f"{t['rows_per_second']} rows/s, {t['seconds_per_1k_rows']} s per 1k rows ({t['chars_per_second']} chars/s); "
              f"model load {results['model_load_seconds']} s")
    results["peak_rss_mib"] = peak_rss_mib()
    print(f"peak RSS {results['peak_rss_mib']} MiB")
    print()
    for name in SETS:
        if name in results:
            print(summary(name, results[name]))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
