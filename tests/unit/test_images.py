from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ctconsole.criu.images import DumpStats, ImageError, RestoreStats, encode_stats, read_stats
from ctconsole.proto import stats_pb2


def test_dump_stats_round_trip(tmp_path: Path) -> None:
    e = stats_pb2.stats_entry()
    d = e.dump
    d.freezing_time, d.frozen_time, d.memdump_time, d.memwrite_time = 10, 5000, 300, 200
    d.pages_scanned, d.pages_skipped_parent, d.pages_written, d.pages_lazy = 100, 0, 90, 0
    p = tmp_path / "stats-dump"
    p.write_bytes(encode_stats(e))
    s = read_stats(p)
    assert isinstance(s, DumpStats)
    assert s.frozen_time_us == 5000 and s.pages_written == 90 and s.bytes_written == 90 * 4096


def test_restore_stats(tmp_path: Path) -> None:
    e = stats_pb2.stats_entry()
    r = e.restore
    r.pages_compared, r.pages_skipped_cow, r.forking_time, r.restore_time = 1, 2, 3, 4
    p = tmp_path / "stats-restore"
    p.write_bytes(encode_stats(e))
    s = read_stats(p)
    assert isinstance(s, RestoreStats) and s.restore_time_us == 4


@pytest.mark.parametrize(
    "data, why",
    [
        (b"", "too short"),
        (struct.pack("=III", 1, 2, 0), "not a CRIU stats image"),
        (struct.pack("=III", 0x55105940, 0x57093306, 50) + b"\x08", "truncated"),
    ],
)
def test_bad_images_are_clear_errors(tmp_path: Path, data: bytes, why: str) -> None:
    p = tmp_path / "stats-dump"
    p.write_bytes(data)
    with pytest.raises(ImageError, match=why):
        read_stats(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        read_stats(tmp_path / "nope")
