"""Pieces of the restore parent that need no CRIU: external pipes, relays, the core-image reader."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest

from ctconsole.criu.images import IMG_COMMON_MAGIC, ImageError, core_pdeath_sig, root_pdeath_sig
from ctconsole.errors import CtError
from ctconsole.migrate.keeper import PIPE_READ, PIPE_WRITE
from ctconsole.migrate.pipes import HOW, external_pipes, open_relays

CORE_MAGIC = 0x55053847
PSTREE_MAGIC = 0x50273030


def _varint(v: int) -> bytes:
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def _image(magic: int, body: bytes) -> bytes:
    return struct.pack("=III", IMG_COMMON_MAGIC, magic, len(body)) + body


def _core(pdeath: int | None) -> bytes:
    tc = b"\x08" + _varint(42)  # some other thread_core field first (futex_rla = 1)
    if pdeath is not None:
        tc += b"\x40" + _varint(pdeath)  # field 8, varint
    # core_entry: mtype(1)=1, then a fixed64 and a fixed32 field to skip, then thread_core(5)
    body = b"\x08\x01" + b"\x31" + b"\0" * 8 + b"\x3d" + b"\0" * 4 + b"\x2a" + _varint(len(tc)) + tc
    return _image(CORE_MAGIC, body)


def test_core_pdeath_sig(tmp_path: Path) -> None:
    (tmp_path / "core-1.img").write_bytes(_core(9))
    (tmp_path / "core-2.img").write_bytes(_core(None))
    assert core_pdeath_sig(tmp_path / "core-1.img") == 9
    assert core_pdeath_sig(tmp_path / "core-2.img") == 0
    (tmp_path / "pstree.img").write_bytes(_image(PSTREE_MAGIC, b"\x08\x01\x10\x00"))
    assert root_pdeath_sig(tmp_path) == 9
    (tmp_path / "bad.img").write_bytes(b"nope")
    with pytest.raises(ImageError):
        core_pdeath_sig(tmp_path / "bad.img")


def test_external_pipes_by_direction() -> None:
    r, w = os.pipe()
    # the "container" holds only the write end (stdout/stderr); we (outside) hold the read end
    writer = subprocess.Popen(["sleep", "30"], stdout=w, stderr=w, stdin=subprocess.DEVNULL)
    reader = subprocess.Popen(["sleep", "30"], stdin=r, stdout=subprocess.DEVNULL)
    try:
        key = os.readlink(f"/proc/self/fd/{r}")
        out = {p.key: p for p in external_pipes([writer.pid])}
        assert out[key].direction == PIPE_WRITE and {fd for _, fd in out[key].holders} == {1, 2}
        assert out[key].spec() == {"key": key, "how": HOW, "path": "", "mode": PIPE_WRITE}
        assert {p.key: p for p in external_pipes([reader.pid])}[key].direction == PIPE_READ
        # both ends inside the tree: CRIU's business alone
        assert key not in {p.key for p in external_pipes([writer.pid, reader.pid])}
    finally:
        for p in (writer, reader):
            p.kill()
            p.wait()
        os.close(r)
        os.close(w)


def test_open_relays_gives_each_side_its_end() -> None:
    inherit, relays = open_relays([("pipe:[1]", PIPE_WRITE), ("pipe:[2]", PIPE_READ)])
    try:
        (k1, d1, peer1), (k2, d2, peer2) = relays
        assert (k1, d1, k2, d2) == ("pipe:[1]", PIPE_WRITE, "pipe:[2]", PIPE_READ)
        os.write(inherit["pipe:[1]"], b"out")  # the container writes, the keeper reads
        assert os.read(peer1, 10) == b"out"
        os.write(peer2, b"in")  # the keeper's end of stdin, the container reads
        assert os.read(inherit["pipe:[2]"], 10) == b"in"
    finally:
        for fd in [*inherit.values(), *(fd for _, _, fd in relays)]:
            os.close(fd)
    with pytest.raises(CtError):
        open_relays([("socket:[1]", PIPE_WRITE)])
