"""Client commands on data and results: upload and delete datasets, download adapters, job and privacy reports."""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from tunevault.client import privacy_report
from tunevault.client.commands.common import DATA_FORMATS, AddCommand, check_file, connect, print_json, say, say_deleted

REPORT_FILES = ("metrics.json", "report.md", "loss_curve.png")


def cmd_upload(args: argparse.Namespace) -> int:
    check_file(args.file)
    with connect(args) as client:
        dataset = client.upload_dataset(args.file, data_format=args.format)
    if args.json:
        print_json(dataset)
    else:
        print(dataset.id)
        say(f"uploaded {args.file} as {dataset.id}: {dataset.row_count} rows, sha256 {dataset.sha256}")
    return 0


def cmd_delete_dataset(args: argparse.Namespace) -> int:
    with connect(args) as client:
        response = client.delete_dataset(args.dataset)
    say_deleted(f"dataset {response.dataset.id}", response.freed_bytes, response.destroyed_key_id)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    with connect(args) as client:
        path = client.download_artifact(args.job, args.output)
    print(path)
    return 0


def cmd_privacy_report(args: argparse.Namespace) -> int:
    with connect(args) as client:
        job = client.get_job(args.job)
        datasets = [("train", client.get_dataset(job.dataset_id))]
        if job.validation_dataset_id:
            datasets.append(("validation", client.get_dataset(job.validation_dataset_id)))
        events = list(client.stream_events(job.id, follow=False))
        report = privacy_report.build(job, datasets, events, client.get_status().retention_days)
    if args.json:
        print_json(report)
    else:
        print(privacy_report.render(report), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The report travels inside the adapter archive: fetch it into a scratch folder, keep only what was asked."""
    with tempfile.TemporaryDirectory(prefix="tunevault-report-") as scratch:
        with connect(args) as client:
            archive = client.download_artifact(args.job, Path(scratch))
        found = _extract_report(archive, Path(scratch) / "report")
        if "metrics.json" not in found:
            raise SystemExit(f"job {args.job}'s archive has no metrics.json")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            for path in found.values():
                shutil.copyfile(path, args.out / path.name)
            say(f"saved {', '.join(sorted(found))} in {args.out}")
        if args.json:
            print_json(json.loads(found["metrics.json"].read_text()))
        elif "report.md" in found:
            print(found["report.md"].read_text(), end="")
        else:
            raise SystemExit(f"job {args.job} has no report.md (it finished before reports existed); "
                             "--json prints its metrics")
    return 0


def _extract_report(archive: Path, target: Path) -> dict[str, Path]:
    """The report files at the archive's top folder, read member by member so no archive path is trusted."""
    target.mkdir()
    found = {}
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                name = Path(member.name)
                if member.isfile() and len(name.parts) == 2 and name.name in REPORT_FILES:
                    source = tar.extractfile(member)
                    if source is not None:
                        (target / name.name).write_bytes(source.read())
                        found[name.name] = target / name.name
    except tarfile.TarError as error:
        raise SystemExit(f"the archive of this job is unreadable: {error}") from error
    return found


def add_parsers(add: AddCommand) -> None:
    upload = add("upload", cmd_upload, "upload a dataset; prints its id")
    upload.add_argument("file", type=Path, help="JSONL, CSV (with a header) or Parquet")
    upload.add_argument("--format", choices=DATA_FORMATS, help="the row format (default: detected)")

    add("delete-dataset", cmd_delete_dataset,
        "delete a dataset: its file, and its data key (crypto-shredding)").add_argument("dataset")

    download = add("download", cmd_download, "download a finished job's adapter archive")
    download.add_argument("job")
    download.add_argument("-o", "--output", type=Path, default=Path("."), help="file or folder")

    report = add("report", cmd_report, "print a finished job's report (--json: its metrics.json)")
    report.add_argument("job")
    report.add_argument("--out", type=Path, help="also save metrics.json, report.md and loss_curve.png in this folder")

    privacy = add("privacy-report", cmd_privacy_report,
                  "a job's privacy report: data hashes, PII, DP epsilon, memorization audit, keys, retention")
    privacy.add_argument("job")  # --json (every command has it) prints it as JSON
