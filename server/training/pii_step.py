"""The PII step of a job, before training: redact identifiers into a scrubbed copy, or refuse the data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tunevault.server.training.chat_data import DatasetError
from tunevault.server.training.events import EventWriter
from tunevault.server.training.job_spec import JobSpec

MAX_LOCATIONS = 20


def apply_pii(spec: JobSpec, events: EventWriter) -> JobSpec:
    """Returns the spec to train with: unchanged (off), pointing at scrubbed copies (redact).

    reject raises DatasetError listing where identifiers were found, never the values, so
    the job fails validation with INVALID_ARGUMENT. Counts by type go out as a "pii" event.
    """
    if spec.pii == "off":
        return spec
    from tunevault.server.privacy.pii import scrub_jsonl

    scrubbed_dir = spec.output_dir.parent / "scrubbed"
    scrubbed_dir.mkdir(parents=True, exist_ok=True)
    replaced: dict[str, Path | None] = {}
    for field, source in (("train_file", spec.train_file), ("validation_file", spec.validation_file)):
        if source is None:
            continue
        target = scrubbed_dir / f"{field}.jsonl" if spec.pii == "redact" else None
        report = scrub_jsonl(source, target, spec.pii, max_locations=MAX_LOCATIONS)
        summary = report.to_dict()
        counts = {f"pii_{kind.lower()}": float(n) for kind, n in summary["counts"].items()}
        events.emit("pii", f"{spec.pii}: {summary['total']} identifier(s) in {summary['rows_affected']} row(s) "
                           f"of the {field.removesuffix('_file')} data",
                    {**counts, "pii_total": float(summary["total"]), "pii_rows_affected": float(summary["rows_affected"])})
        if spec.pii == "reject" and summary["total"]:
            where = "; ".join(summary["locations"])
            raise DatasetError(f"{field}: personal identifiers found (pii=reject): {where}")
        replaced[field] = target
    return dataclasses.replace(spec, **replaced) if spec.pii == "redact" else spec
