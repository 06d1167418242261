"""Frame reads with deadlines (agent/channel.py): a half frame never blocks a reader forever.

Real pipes, no root: the console's reads are bounded as a whole (first byte
and every byte after it); the agent's wait for the next request is unbounded,
but the rest of a frame that started has a deadline.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from ctconsole.agent.channel import ChannelError, encode_frame, read_frame


@pytest.fixture
def pipe() -> Iterator[tuple[BinaryIO, int]]:
    r, w = os.pipe()
    with os.fdopen(r, "rb", buffering=0) as reader:
        yield reader, w
    os.close(w)


def test_half_header_hits_the_deadline(pipe: tuple[BinaryIO, int]) -> None:
    reader, w = pipe
    os.write(w, struct.pack(">I", 10)[:2])
    t0 = time.monotonic()
    with pytest.raises(ChannelError, match="deadline"):
        read_frame(reader, deadline=time.monotonic() + 0.5)
    assert time.monotonic() - t0 < 2


def test_half_body_hits_the_rest_timeout(pipe: tuple[BinaryIO, int]) -> None:
    reader, w = pipe
    os.write(w, struct.pack(">I", 10) + b"abc")
    t0 = time.monotonic()
    with pytest.raises(ChannelError, match="deadline"):
        read_frame(reader, rest_timeout=0.5)
    assert time.monotonic() - t0 < 2.5


def test_whole_frames_still_pass(pipe: tuple[BinaryIO, int]) -> None:
    reader, w = pipe
    os.write(w, encode_frame(b"hello") + encode_frame(b""))
    assert read_frame(reader, deadline=time.monotonic() + 1, rest_timeout=1) == b"hello"
    assert read_frame(reader, rest_timeout=1) == b""
