"""The PII step of a job, before training: redact identifiers into a scrubbed copy, or refuse the data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tunevault.server.contract.chat_data import DatasetError
from tunevault.server.contract.events import EventWriter
from tunevault.server.contract.job_spec import JobSpec
from tunevault.server.contract.preference_rows import PREFERENCE_FORMATS
from tunevault.server.training.pii_preference import back_to_preference_rows, has_tool_turns, write_pairs_as_chats

MAX_LOCATIONS = 20


def apply_pii(spec: JobSpec, events: EventWriter) -> JobSpec:
    """Returns the spec to train with: unchanged (off), pointing at scrubbed copies (redact).

    reject raises DatasetError listing where identifiers were found, never the values, so
    the job fails validation with INVALID_ARGUMENT. Counts by type go out as a "pii" event.
    """
    if spec.pii == "off":
        return spec
    from tunevault.server.privacy.sealing import scratch

    if spec.pii == "reject":
        # Reject keeps nothing, but may convert the rows to chats first: that copy goes to a private
        # tmpfs folder, never to the job folder, whoever runs this (the worker or the validator).
        workspace = scratch.make_private_dir(f"tunevault-pii-{spec.job_id}-")
        try:
            return _apply(spec, events, workspace)
        finally:
            scratch.remove(workspace)
    # Redact: the worker's spec already points into its tmpfs workspace (privacy/sealed_job.py).
    return _apply(spec, events, spec.output_dir.parent / "scrubbed")


def _apply(spec: JobSpec, events: EventWriter, scrubbed_dir: Path) -> JobSpec:
    from tunevault.server.privacy.pii.scrubber import scrub_jsonl

    scrubbed_dir.mkdir(parents=True, exist_ok=True)
    replaced: dict[str, Path | None] = {}
    for field, original in (("train_file", spec.train_file), ("validation_file", spec.validation_file)):
        if original is None:
            continue
        source, text_format = as_chat_jsonl(original, scrubbed_dir / f"{field}.chat.jsonl")
        target = scrubbed_dir / f"{field}.jsonl" if spec.pii == "redact" else None
        report = scrub_jsonl(source, target, spec.pii, max_locations=MAX_LOCATIONS)
        if source != original:
            source.unlink()  # an unscrubbed copy must not outlive the step
        if target is not None and text_format is not None:
            back_to_text_rows(target, text_format)
        summary = report.to_dict()
        counts = {f"pii_{kind.lower()}": float(n) for kind, n in summary["counts"].items()}
        events.emit("pii", f"{spec.pii}: {summary['total']} identifier(s) in {summary['rows_affected']} row(s) "
                           f"of the {field.removesuffix('_file')} data",
                    {**counts, "pii_total": float(summary["total"]), "pii_rows_affected": float(summary["rows_affected"])})
        if spec.pii == "reject" and summary["total"]:
            where = "; ".join(summary["locations"])
            raise DatasetError(f"{field}: personal identifiers found (pii=reject): {where}")
        replaced[field] = target
    if spec.pii != "redact":
        return spec
    # The scrubbed copies may be chats where the uploads were instruction rows: detect them afresh.
    return dataclasses.replace(spec, **replaced, data_format=None, validation_data_format=None,
                               unscrubbed_train_file=spec.train_file)


def as_chat_jsonl(path: Path, scratch: Path) -> tuple[Path, str | None]:
    """The dataset as chat JSONL for the scrubber: the file itself when it already is, else a copy.

    Returns (file to scrub, "completion" | "text" when its rows must be turned back into that
    format afterwards). Instruction rows stay chats (they train as one), so they need no way back.
    Locations the scrubber reports then count rows of the copy, in the file's order.
    """
    from tunevault.server.contract.chat_data import ChatRow
    from tunevault.server.contract.formats import read_dataset

    dataset = read_dataset(path)
    # Tool calls and tool results are not in a message's content as uploaded: scrub the chats they become.
    if dataset.data_format == "chat" and dataset.file_kind == "jsonl" and not has_tool_turns(path):
        return path, None
    if dataset.data_format in PREFERENCE_FORMATS:
        write_pairs_as_chats(dataset.rows, scratch)  # type: ignore[arg-type]  # preference rows, by the format
        return scratch, "preference"
    with scratch.open("w", encoding="utf-8") as out:
        for row in dataset.rows:
            if isinstance(row, ChatRow):
                messages = [{"role": m.role, "content": m.content, **({} if m.trainable else {"weight": 0})}
                            for m in row.messages]
            else:
                messages = [{"role": "user", "content": row.prompt}, {"role": "assistant", "content": row.completion}]
            out.write(json.dumps({"messages": messages}) + "\n")
    text_format = dataset.data_format if dataset.data_format in ("completion", "text") else None
    return scratch, text_format


def back_to_text_rows(path: Path, text_format: str) -> None:
    """Rewrite scrubbed chat rows made by as_chat_jsonl as prompt/completion, text or preference rows again."""
    if text_format == "preference":
        back_to_preference_rows(path)
        return
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with path.open("w", encoding="utf-8") as out:
        for row in rows:
            prompt, completion = (m["content"] for m in row["messages"])
            record = {"text": completion} if text_format == "text" else {"prompt": prompt, "completion": completion}
            out.write(json.dumps(record) + "\n")
