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


def _varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data):
            raise ImageError("truncated varint in a core image")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def _fields(data: bytes) -> dict[int, list[int | bytes]]:
    """Raw protobuf wire fields (varint and length-delimited; fixed ones skipped)."""
    out: dict[int, list[int | bytes]] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(data, i)
            out.setdefault(num, []).append(v)
        elif wire == 2:
            n, i = _varint(data, i)
            out.setdefault(num, []).append(data[i : i + n])
            i += n
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ImageError(f"unexpected wire type {wire} in a core image")
    return out


def core_pdeath_sig(path: str | Path) -> int:
    """The parent-death signal CRIU recorded for a task (``core-PID.img``), 0 when none.

    Why read it from the image: the kernel shows a task's ``PR_SET_PDEATHSIG``
    nowhere in /proc (only ``prctl(PR_GET_PDEATHSIG)`` in the task itself);
    CRIU fetches it with its parasite and stores it in
    ``core_entry.thread_core(5).pdeath_sig(8)`` (images/core.proto), and
    restores it. A root with one dies when its parent exits (keeper.py).
    Decoded by hand: ctconsole does not ship CRIU's core.proto stubs.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) < 12 or struct.unpack_from("=I", data, 0)[0] != IMG_COMMON_MAGIC:
        raise ImageError(f"{path} is not a CRIU image")
    (size,) = struct.unpack_from("=I", data, 8)
    core = _fields(data[12 : 12 + size])
    for tc in core.get(5, []):
        if isinstance(tc, bytes):
            sig = _fields(tc).get(8, [0])[0]
            return sig if isinstance(sig, int) else 0
    return 0


def root_pdeath_sig(images_dir: str | Path) -> int:
    """The root task's parent-death signal in a dump (0 when none); the root is pstree.img's first entry."""
    d = Path(images_dir)
    try:
        data = (d / "pstree.img").read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {d / 'pstree.img'}: {exc.strerror}") from exc
    if len(data) < 12:
        raise ImageError(f"{d / 'pstree.img'} is truncated")
    (size,) = struct.unpack_from("=I", data, 8)
    pid = _fields(data[12 : 12 + size]).get(1, [0])[0]
    if not isinstance(pid, int) or pid <= 0:
        raise ImageError(f"{d / 'pstree.img'} names no root task")
    return core_pdeath_sig(d / f"core-{pid}.img")
