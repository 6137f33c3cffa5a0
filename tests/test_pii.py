"""PII scrubber: every type is found, placeholders replace values, reports never hold values.

Real spaCy model, real gazetteers, real files; nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tunevault.server.privacy.pii import scrubber as pii

REPO = Path(__file__).resolve().parents[1]

# (type, sentence, the identifier in it that must be found with that type)
ONE_PER_TYPE = [
    ("NAME", "Patient Harriet Quigley was seen for a cough.", "Harriet Quigley"),
    ("NAME", "Dr. Oyelaran reviewed the films.", "Oyelaran"),
    ("DATE", "She was admitted on 04/11/2023 with pneumonia.", "04/11/2023"),
    ("DATE", "The hearing is set for September 9, 2024.", "September 9, 2024"),
    ("AGE", "A 96-year-old woman presented after a fall.", "96"),
    ("PHONE", "Call her daughter at (216) 555-0144 tonight.", "(216) 555-0144"),
    ("FAX", "Records were faxed to 216-555-0145 this morning.", "216-555-0145"),
    ("EMAIL", "Send the letter to r.quigley@example.org please.", "r.quigley@example.org"),
    ("URL", "Results are posted at https://portal.example.com/r/991 now.", "https://portal.example.com/r/991"),
    ("IP", "The login came from 203.0.113.77 at midnight.", "203.0.113.77"),
    ("SSN", "His SSN is 318-44-2291 per the intake form.", "318-44-2291"),
    ("MRN", "MRN 44817302 was merged with the old chart.", "44817302"),
    ("HEALTH_PLAN_ID", "Her member ID QKX55102934 was verified.", "QKX55102934"),
    ("ACCOUNT", "Payments go to account 771204589 at the credit union.", "771204589"),
    ("CREDIT_CARD", "The card 4111 1111 1111 1111 was declined.", "4111 1111 1111 1111"),
    ("LICENSE", "Driver's license D412-5581-2290 was copied.", "D412-5581-2290"),
    ("VEHICLE_ID", "The VIN 1FTFW1ET5DFC10312 matches the title.", "1FTFW1ET5DFC10312"),
    ("DEVICE_ID", "The pacemaker serial number PZX771204 was logged.", "PZX771204"),
    ("ID", "Employee ID EMP-55120 badge was deactivated.", "EMP-55120"),
    ("ADDRESS", "He lives at 4410 Birchwood Lane, Apt 2, Dayton, OH 45419 with his wife.", "4410 Birchwood Lane, Apt 2, Dayton, OH 45419"),
    ("LOCATION", "She moved from Chattanooga last year.", "Chattanooga"),
    ("ZIP", "Enrolled from ZIP code 60657 in the pilot.", "60657"),
    ("CASE_NUMBER", "See Case No. 1:23-cv-00871-ABC for the docket.", "1:23-cv-00871-ABC"),
]

HARD_NEGATIVES = [
    "Parkinson disease with resting tremor; carbidopa-levodopa 25/100 three times daily.",
    "Crohn's disease flare treated with prednisone and mesalamine.",
    "Started atorvastatin 40 mg and lisinopril 10 mg; metoprolol continued.",
    "BP 132/84, HR 88, SpO2 96%, Apgar 8/9, Gleason 3+4=7.",
    "ICD-10 E11.9 and I10; CPT 99214; a 67-year-old man seen in 2019.",
    "See Roe v. Wade, 410 U.S. 113 (1973), and 42 U.S.C. § 1983.",
    "A Daubert hearing followed; Miranda warnings were given.",
    "Hashimoto thyroiditis and Graves disease; Babinski sign negative.",
    "The patient lives in Ohio and was born in Mexico.",
]


def test_every_type_is_found_in_a_sentence():
    texts = [sentence for _, sentence, _ in ONE_PER_TYPE]
    for (typ, sentence, value), findings in zip(ONE_PER_TYPE, pii.scan_many(texts)):
        spans = {(sentence[f.start:f.end], f.type) for f in findings}
        assert (value, typ) in spans, f"{typ} {value!r} not found in {sentence!r}: {spans}"
    assert {typ for typ, _, _ in ONE_PER_TYPE} == set(pii.TYPES)


def test_findings_are_sorted_frozen_and_never_overlap():
    text = ("Robert Kowalski, DOB 07/22/1958, MRN 00482913, lives at 1420 Maple Avenue, Columbus, OH 43215; "
            "call (614) 555-0182 or write to rk@example.com. Dr. Helen Tran saw him on March 2, 2022.")
    findings = pii.scan(text)
    assert findings == sorted(findings)
    assert all(a.end <= b.start for a, b in zip(findings, findings[1:]))
    with pytest.raises(AttributeError):
        findings[0].type = "X"  # frozen dataclass
    assert [f.type for f in findings] == ["NAME", "DATE", "MRN", "ADDRESS", "PHONE", "EMAIL", "NAME", "DATE"]


def test_redact_replaces_values_with_typed_placeholders_and_counts_types_only():
    text = "Ms. Angela Price (SSN 512-44-7781) called from 740-555-0193 on 3/14/2023 about her mother Ruth Price."
    redacted, counts = pii.redact(text)
    assert redacted == "Ms. [NAME] (SSN [SSN]) called from [PHONE] on [DATE] about her mother [NAME]."
    assert counts == Counter({"NAME": 2, "SSN": 1, "PHONE": 1, "DATE": 1})
    assert all(key in pii.TYPES for key in counts) and all(isinstance(v, int) for v in counts.values())
    # Redacting again changes nothing: the placeholders themselves are not identifiers.
    assert pii.redact(redacted) == (redacted, Counter())


@pytest.mark.parametrize("text", HARD_NEGATIVES)
def test_hard_negatives_are_left_alone(text):
    assert pii.scan(text) == []


def test_chat_row_redact_mode_redacts_every_message_and_keeps_the_rest():
    row = {"messages": [
        {"role": "system", "content": "You summarise clinical notes."},
        {"role": "user", "content": "Summarise: Walter Jensen, 97, seen 11/17/22 at 88 Juniper Court."},
        {"role": "assistant", "content": [{"type": "text", "text": "Mr. Jensen (walter.j@example.com) is stable."}]},
    ], "metadata": {"source": "ward 4"}}
    original = json.loads(json.dumps(row))
    result = pii.scrub_chat_row(row, "redact")
    assert row == original  # the input is not modified
    assert result.row["messages"][0] == row["messages"][0]
    assert result.row["messages"][1]["content"] == "Summarise: [NAME], [AGE], seen [DATE] at [ADDRESS]."
    assert result.row["messages"][2]["content"][0]["text"] == "Mr. [NAME] ([EMAIL]) is stable."
    assert result.row["metadata"] == row["metadata"]
    assert result.counts == Counter({"NAME": 2, "AGE": 1, "DATE": 1, "ADDRESS": 1, "EMAIL": 1})


def test_chat_row_reject_mode_lists_locations_without_values():
    row = {"messages": [
        {"role": "user", "content": "My SSN is 233-91-5508."},
        {"role": "assistant", "content": "Thank you, Bethany Collins."},
    ]}
    result = pii.scrub_chat_row(row, "reject")
    assert result.row == row
    assert result.locations == ["messages[0].content: SSN", "messages[1].content: NAME"]
    flat = json.dumps([result.locations, result.counts])
    assert "233-91-5508" not in flat and "Bethany" not in flat and "Collins" not in flat


def write_dataset(path: Path) -> list[str]:
    """A small chat dataset and the identifiers it holds."""
    identifiers = ["Gwendolyn Pryce", "30017745", "04/18/2024", "(330) 555-0108", "gpryce@example.net",
                   "6021 Cedar Bluff Rd, Apt 12, Louisville, KY 40229", "448-02-9136", "Owen Pryce",
                   "Marcus Reed", "19-CR-00331", "Kalamazoo", "4111 1111 1111 1111"]
    rows = [
        {"messages": [{"role": "user", "content": "Note for Gwendolyn Pryce, MRN 30017745, surgery 04/18/2024."},
                      {"role": "assistant", "content": "Consent was signed by her son Owen Pryce."}]},
        {"messages": [{"role": "user", "content": "What is the weather like?"}, {"role": "assistant", "content": "Sunny."}]},
        {"messages": [{"role": "user", "content": "Call (330) 555-0108 or email gpryce@example.net; SSN 448-02-9136."},
                      {"role": "assistant", "content": "Mail goes to 6021 Cedar Bluff Rd, Apt 12, Louisville, KY 40229."}]},
        {"messages": [{"role": "user", "content": "Defendant Marcus Reed, Docket No. 19-CR-00331, moved from Kalamazoo."},
                      {"role": "assistant", "content": "The retainer was paid with card 4111 1111 1111 1111."}]},
    ]
    with open(path, "w", encoding="utf-8") as handle:
        for i, row in enumerate(rows):
            handle.write(json.dumps(row) + "\n")
            if i == 1:
                handle.write("\n")  # a blank line is kept, not counted
    return identifiers


def test_redacted_dataset_contains_none_of_the_identifiers(tmp_path):
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    identifiers = write_dataset(src)
    report = pii.scrub_jsonl(src, dst, "redact")
    written = dst.read_text(encoding="utf-8")
    for value in identifiers:
        assert value not in written
    for part in ("Gwendolyn", "Pryce", "Reed", "5508", "0108"):
        assert part not in written
    lines = written.split("\n")
    assert len(lines) == 6 and lines[2] == "" and lines[-1] == ""
    assert json.loads(lines[1]) == {"messages": [{"role": "user", "content": "What is the weather like?"}, {"role": "assistant", "content": "Sunny."}]}
    assert report.rows == 4 and report.rows_affected == 3
    assert report.counts == Counter({"NAME": 3, "MRN": 1, "DATE": 1, "PHONE": 1, "EMAIL": 1, "SSN": 1, "ADDRESS": 1,
                                     "CASE_NUMBER": 1, "LOCATION": 1, "CREDIT_CARD": 1})
    assert report.locations == ["line 1, messages[0].content: NAME", "line 1, messages[0].content: MRN",
                                "line 1, messages[0].content: DATE", "line 1, messages[1].content: NAME"] + report.locations[4:]
    summary = json.dumps(report.to_dict())
    assert all(value not in summary for value in identifiers)


def test_reject_mode_reports_where_and_writes_nothing(tmp_path):
    src = tmp_path / "in.jsonl"
    identifiers = write_dataset(src)
    report = pii.scrub_jsonl(src, None, "reject", max_locations=3)
    assert report.rows == 4 and report.rows_affected == 3 and report.total == 12
    assert report.locations == ["line 1, messages[0].content: NAME", "line 1, messages[0].content: MRN",
                                "line 1, messages[0].content: DATE"]
    assert report.locations_omitted == 9
    assert "line 5, messages[0].content: NAME" in pii.scrub_jsonl(src, None, "reject").locations
    summary = json.dumps(report.to_dict())
    assert all(value not in summary for value in identifiers)
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_pathological_input_scans_in_linear_time():
    """Long runs that make naive regular expressions backtrack quadratically."""
    import time

    for text in ("a." * 20000, "-".join(["12"] * 20000), "1" * 50000, "account " + ":" * 20000, "MRN" + " " * 20000 + "x"):
        started = time.perf_counter()
        pii.scan(text)
        assert time.perf_counter() - started < 5, text[:20]


def test_bad_input_is_refused_with_its_line(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(ValueError, match="line 2"):
        pii.scrub_jsonl(src, tmp_path / "out.jsonl", "redact")
    with pytest.raises(ValueError, match="mode"):
        pii.scrub_chat_row({"messages": []}, "mask")
    with pytest.raises(ValueError, match="output path"):
        pii.scrub_jsonl(src, None, "redact")


def test_scanning_is_deterministic_across_processes_and_never_imports_torch(tmp_path):
    """Same findings in a fresh process with another hash seed; the scrubber keeps torch out of
    the process, which the API server relies on (DESIGN.md: the server never imports torch)."""
    texts = [json.loads(line)["text"] for line in (REPO / "bench" / "data" / "pii_eval_holdout.jsonl").read_text().splitlines()]
    here = [[(f.start, f.end, f.type) for f in found] for found in pii.scan_many(texts)]
    assert here == [[(f.start, f.end, f.type) for f in found] for found in pii.scan_many(texts)]
    script = (
        "import json, sys\n"
        "from tunevault.server.privacy.pii import scrubber as pii\n"
        "texts = json.load(sys.stdin)\n"
        "out = [[(f.start, f.end, f.type) for f in found] for found in pii.scan_many(texts)]\n"
        "print(json.dumps({'findings': out, 'torch': 'torch' in sys.modules}))\n"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")
    done = subprocess.run([sys.executable, "-c", script], input=json.dumps(texts), capture_output=True, text=True, env=env, timeout=120, check=True)
    there = json.loads(done.stdout)
    assert there["torch"] is False
    assert [[tuple(f) for f in found] for found in there["findings"]] == here


def test_benchmark_targets_hold_on_the_labelled_set():
    """The issue's bar on bench/data/pii_eval.jsonl: recall >= 0.95 and precision >= 0.90."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import pii_bench
    finally:
        sys.path.remove(str(REPO / "bench"))
    rows = pii_bench.load(pii_bench.SETS["main"])
    assert sum(len(r["entities"]) for r in rows) >= 300
    overall = pii_bench.evaluate(rows, show_errors=False)["overall"]
    assert overall["recall"] >= 0.95 and overall["precision"] >= 0.90, overall


def test_redact_keeps_the_format_of_csv_and_prompt_completion_datasets(tmp_path) -> None:
    import io as _io
    import json as _json
    from pathlib import Path as _Path

    from tunevault.server.contract.events import EventWriter
    from tunevault.server.contract.formats import read_dataset
    from tunevault.server.contract.job_spec import JobSpec, resolve_for_files
    from tunevault.server.training.pii_step import apply_pii

    csv_file = tmp_path / "train.csv"
    csv_file.write_text('instruction,input,output\nRoute this note,"Write to jane.doe@example.com today",cardiology\n')
    jsonl = tmp_path / "validation.jsonl"
    jsonl.write_text(_json.dumps({"prompt": "Call 617-555-0142 about", "completion": " the scan"}) + "\n")
    spec = JobSpec(job_id="j", base_model_dir=_Path("unused"), train_file=csv_file, validation_file=jsonl,
                   output_dir=tmp_path / "job" / "artifacts", checkpoint_dir=tmp_path / "job" / "checkpoints",
                   hyperparameters=resolve_for_files({}, csv_file, jsonl), pii="redact")
    scrubbed = apply_pii(spec, EventWriter(_io.StringIO()))

    train = read_dataset(scrubbed.train_file)
    assert train.data_format == "chat" and "jane.doe" not in scrubbed.train_file.read_text()
    assert "[EMAIL]" in train.rows[0].messages[0].content
    validation = read_dataset(scrubbed.validation_file)
    assert validation.data_format == "completion" and "[PHONE]" in validation.rows[0].prompt
    assert validation.rows[0].completion == " the scan"
    assert sorted(p.name for p in (tmp_path / "job" / "scrubbed").iterdir()) == ["train_file.jsonl", "validation_file.jsonl"]
