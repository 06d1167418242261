"""Read CRIU's ``stats-dump`` / ``stats-restore`` files into plain objects.

Framing (criu/include/magic.h, criu/stats.c): service images start with
``IMG_SERVICE_MAGIC`` then the type magic ``STATS_MAGIC``, then one entry:
a u32 length in host byte order followed by a ``stats_entry`` protobuf.
Times are microseconds. The migration journal and the progress view use
these numbers (frozen time, pages written) instead of guessing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from ctconsole.errors import CtError
from ctconsole.proto import stats_pb2

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
STATS_MAGIC = 0x57093306
PAGE_SIZE = 4096


class ImageError(CtError):
    """A CRIU image that is missing, truncated or of the wrong type."""


@dataclass(frozen=True)
class DumpStats:
    freezing_time_us: int
    frozen_time_us: int
    memdump_time_us: int
    memwrite_time_us: int
    pages_scanned: int
    pages_skipped_parent: int
    pages_written: int
    pages_lazy: int
    irmap_resolve_us: int = 0
    page_pipes: int = 0
    page_pipe_bufs: int = 0
    shpages_scanned: int = 0
    shpages_skipped_parent: int = 0
    shpages_written: int = 0

    @property
    def bytes_written(self) -> int:
        return self.pages_written * PAGE_SIZE


@dataclass(frozen=True)
class RestoreStats:
    pages_compared: int
    pages_skipped_cow: int
    forking_time_us: int
    restore_time_us: int
    pages_restored: int = 0


def _parse(data: bytes, source: str) -> stats_pb2.stats_entry:
    if len(data) < 12:
        raise ImageError(f"{source}: too short for a CRIU stats image ({len(data)} bytes)")
    magic0, magic1, size = struct.unpack_from("=III", data, 0)
    if magic0 != IMG_SERVICE_MAGIC or magic1 != STATS_MAGIC:
        raise ImageError(f"{source}: not a CRIU stats image (magic {magic0:#x}/{magic1:#x})")
    body = data[12 : 12 + size]
    if len(body) != size:
        raise ImageError(f"{source}: truncated stats entry ({len(body)} of {size} bytes)")
    entry = stats_pb2.stats_entry()
    try:
        entry.ParseFromString(body)
    except DecodeError as exc:
        raise ImageError(f"{source}: corrupt stats entry: {exc}") from exc
    return entry


def parse_stats(data: bytes, source: str = "stats") -> DumpStats | RestoreStats:
    entry = _parse(data, source)
    if entry.HasField("dump"):
        d = entry.dump
        return DumpStats(
            freezing_time_us=d.freezing_time,
            frozen_time_us=d.frozen_time,
            memdump_time_us=d.memdump_time,
            memwrite_time_us=d.memwrite_time,
            pages_scanned=d.pages_scanned,
            pages_skipped_parent=d.pages_skipped_parent,
            pages_written=d.pages_written,
            pages_lazy=d.pages_lazy,
            irmap_resolve_us=d.irmap_resolve,
            page_pipes=d.page_pipes,
            page_pipe_bufs=d.page_pipe_bufs,
            shpages_scanned=d.shpages_scanned,
            shpages_skipped_parent=d.shpages_skipped_parent,
            shpages_written=d.shpages_written,
        )
    if entry.HasField("restore"):
        r = entry.restore
        return RestoreStats(
            pages_compared=r.pages_compared,
            pages_skipped_cow=r.pages_skipped_cow,
            forking_time_us=r.forking_time,
            restore_time_us=r.restore_time,
            pages_restored=r.pages_restored,
        )
    raise ImageError(f"{source}: stats image holds neither dump nor restore statistics")


def read_stats(path: str | Path) -> DumpStats | RestoreStats:
    """Read ``stats-dump`` or ``stats-restore``; raises :class:`ImageError` with the reason."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {p}: {exc.strerror or exc}") from exc
    return parse_stats(data, str(p))


def encode_stats(entry: stats_pb2.stats_entry) -> bytes:
    """The inverse of :func:`parse_stats` (used by tests and the agent when relaying stats)."""
    body = entry.SerializeToString()
    return struct.pack("=III", IMG_SERVICE_MAGIC, STATS_MAGIC, len(body)) + body
