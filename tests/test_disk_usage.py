"""disk_usage: bytes under a job folder, and a file renamed away mid-walk does not fail GetJob."""

from __future__ import annotations

from pathlib import Path

from tunevault.server.scheduler import scheduler
from tunevault.server.scheduler.scheduler import disk_usage


def test_disk_usage_sums_files_and_skips_symlinks(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5)
    (tmp_path / "link").symlink_to(tmp_path / "a")
    assert disk_usage(tmp_path) == 15
    assert disk_usage(tmp_path / "missing") == 0


def test_a_file_gone_between_listing_and_stat_counts_zero(tmp_path: Path) -> None:
    # What the worker's spec.json.tmp -> spec.json rename does to a walk in progress.
    assert scheduler._size(tmp_path / "spec.json.tmp") == 0
