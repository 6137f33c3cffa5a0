"""A job's privacy report for a compliance officer, assembled from what the API already says about the job.

What data went in (dataset ids, SHA-256, rows, data key ids), what was done to it (PII mode and
the counts by type from the job's "pii" events), what guarantee came out (DP epsilon and delta
with the accountant, or none), what the memorization audit measured (canary exposure, identifiers
repeated), which key seals the job's files and when retention deletes them; who asked is in the
hash-chained audit log, which the report points to.
Built from GetJob, GetDataset, GetStatus and the job's events: nothing here trusts a file
the job wrote, and the report never holds a value of the data, only hashes and counts.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from tunevault.v1 import tunevault_pb2 as pb

PII_PREFIX = "pii_"


def _when(timestamp: Any) -> datetime | None:
    return timestamp.ToDatetime(tzinfo=timezone.utc) if timestamp.seconds or timestamp.nanos else None


def _dataset(role: str, dataset: pb.Dataset) -> dict[str, Any]:
    return {"role": role, "id": dataset.id, "sha256": dataset.sha256, "rows": dataset.row_count,
            "encryption_key_id": dataset.encryption_key_id or None}


def _pii(job: pb.Job, events: list[pb.JobEvent]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for event in events:
        if event.type != "pii":
            continue
        for name, value in event.metrics.items():
            if name.startswith(PII_PREFIX) and name not in ("pii_total", "pii_rows_affected"):
                kind = name.removeprefix(PII_PREFIX).upper()
                counts[kind] = counts.get(kind, 0) + int(value)
    mode = pb.PiiMode.Name(job.pii).removeprefix("PII_MODE_").lower()
    # With PII mode off nothing looked at the data: "none found" would claim a scan that never ran.
    scanned = job.pii not in (pb.PII_MODE_OFF, pb.PII_MODE_UNSPECIFIED)
    return {"mode": mode, "scanned": scanned, "found_by_type": counts, "found_total": sum(counts.values())}


def _dp(job: pb.Job) -> dict[str, Any] | str:
    metrics = job.result.metrics
    if "dp_epsilon" not in metrics:
        return "none"
    return {"epsilon": metrics["dp_epsilon"], "delta": metrics["dp_delta"],
            "accountant": job.hyperparameters.dp_accountant or "rdp",
            "noise_multiplier": metrics.get("dp_noise_multiplier"), "max_grad_norm": metrics.get("dp_max_grad_norm"),
            "unit": "one training row"}


def _memorization(events: list[pb.JobEvent]) -> dict[str, Any] | str:
    canaries = [{"repetitions": int(e.metrics["repetitions"]), "exposure_bits": e.metrics["exposure_bits"],
                 "base_exposure_bits": e.metrics.get("base_exposure_bits"),
                 "calibrated_exposure_bits": e.metrics.get("calibrated_exposure_bits"),
                 "extracted": bool(e.metrics["extracted"])}
                for e in events if e.type == "canary"]
    summary = next((e for e in events if e.type == "memorization"), None)
    if summary is None:
        return "not audited"
    return {"canaries": canaries, "identifiers_at_risk": int(summary.metrics.get("identifiers_at_risk", 0)),
            "identifiers_repeated": int(summary.metrics.get("identifiers_reproduced", 0))}


def _retention(job: pb.Job, retention_days: float) -> str:
    finished = _when(job.finished_at)
    if job.artifacts_deleted:
        return "files deleted and the job's data key destroyed"
    if retention_days <= 0:
        return "kept until deleted (DeleteJob destroys the job's data key)"
    if finished is None:
        return f"deleted {retention_days:g} days after the job finishes"
    return f"deleted on or after {(finished + timedelta(days=retention_days)).date().isoformat()}"


def build(job: pb.Job, datasets: list[tuple[str, pb.Dataset]], events: list[pb.JobEvent],
          retention_days: float) -> dict[str, Any]:
    """The report as a plain dict (JSON-ready)."""
    created, finished = _when(job.created_at), _when(job.finished_at)
    return {
        "job_id": job.id,
        "state": pb.JobState.Name(job.state).removeprefix("JOB_STATE_"),
        "tenant": job.tenant,
        "base_model": job.base_model,
        "created_at": created.isoformat() if created else None,
        "finished_at": finished.isoformat() if finished else None,
        "datasets": [_dataset(role, d) for role, d in datasets],
        "pii": _pii(job, events),
        "differential_privacy": _dp(job),
        "memorization_audit": _memorization(events),
        "adapter_sha256": job.result.adapter_sha256 or None,
        "encryption_key_id": job.encryption_key_id or None,
        "retention": _retention(job, retention_days),
    }


def _before(canary: dict[str, Any]) -> str:
    """The canary's exposure under the base model and calibrated by it, when the server measured them."""
    base, calibrated = canary.get("base_exposure_bits"), canary.get("calibrated_exposure_bits")
    if base is None or calibrated is None:
        return ""
    return f" (before training {base:.2f}, by what training changed {calibrated:.2f})"


def render(report: dict[str, Any]) -> str:
    """The report as short Markdown for a person."""
    lines = [f"# Privacy report: {report['job_id']}", "",
             f"- state {report['state']}, base model {report['base_model']}, tenant {report['tenant']}, "
             f"created {report['created_at']}, finished {report['finished_at'] or '-'}",
             "- who asked, and every download: `tunevault audit export` (hash-chained)"]
    for d in report["datasets"]:
        lines.append(f"- {d['role']} data: {d['id']}, sha256 {d['sha256']}, {d['rows']} rows, "
                     f"sealed under key {d['encryption_key_id'] or 'none'}")
    pii = report["pii"]
    found = ", ".join(f"{k} {v}" for k, v in sorted(pii["found_by_type"].items())) or "none found"
    found = found if pii["scanned"] else "not scanned"
    lines.append(f"- PII: mode {pii['mode']}; {found}")
    dp = report["differential_privacy"]
    lines.append("- differential privacy: none" if dp == "none" else
                 f"- differential privacy: epsilon {dp['epsilon']:.4g} at delta {dp['delta']:.3g} "
                 f"({dp['accountant'].upper()} accountant), per {dp['unit']}")
    audit = report["memorization_audit"]
    if audit == "not audited":
        lines.append("- memorization audit: not run")
    else:
        exposures = ", ".join(f"{c['repetitions']}x {c['exposure_bits']:.2f} bits{_before(c)}"
                              f"{' (EXTRACTED)' if c['extracted'] else ''}" for c in audit["canaries"])
        lines.append(f"- memorization audit: canary exposure {exposures}; identifiers repeated "
                     f"{audit['identifiers_repeated']} of {audit['identifiers_at_risk']}")
    lines.append(f"- adapter sha256 {report['adapter_sha256'] or '-'}, sealed under key "
                 f"{report['encryption_key_id'] or 'none'}")
    lines.append(f"- retention: {report['retention']}")
    return "\n".join(lines) + "\n"
