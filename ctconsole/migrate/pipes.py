"""Stdio pipes whose other end lives outside the container, and how they are re-created.

Why: container managers (containerd-shim, conmon, a ``sleep | runc run | cat``
pipeline) give the container init pipes for stdio and keep the other ends
themselves. CRIU dumps the container's end like any pipe, but on restore it
can only rebuild a *whole* pipe from what is in the tree: the peer held
outside is gone, so a write to stdout hits a pipe without readers (SIGPIPE,
EPIPE) and stdin reads EOF. runc solves it by recording the pipe ids at
checkpoint (``descriptors.json``) and passing new pipes on restore as
``inherit_fd pipe:[INO]`` (CRIU matches the dumped pipe id and reopens the
new pipe with the dumped flags, pipes.c ``open_pipe``/``reopen_pipe``).
ctconsole does the same across hosts: the source lists the pipes whose ends
the tree holds in one direction only, the destination makes new pipes, CRIU
plugs in the container's ends, and the restore parent (keeper.py) keeps the
other ends: it logs what the container writes and holds stdin open.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ctconsole.migrate.keeper import PIPE_READ, PIPE_WRITE

HOW = "pipe-relay"  # InheritFd.how for these (mode = direction as the container sees it)
KEY_RE = re.compile(r"^pipe:\[(\d+)\]$")


@dataclass(frozen=True)
class ExternalPipe:
    key: str  # "pipe:[INO]", the CRIU inherit_fd key
    direction: str  # PIPE_WRITE (the container writes: stdout/stderr) or PIPE_READ (stdin)
    holders: tuple[tuple[int, int], ...]  # (pid, fd) in the tree

    def spec(self) -> dict[str, str]:
        """The engine's inherit entry (journaled, sent to the agent as InheritFd)."""
        return {"key": self.key, "how": HOW, "path": "", "mode": self.direction}


def _access(pid: int, fd: str) -> int:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE
    except (OSError, ValueError):
        pass
    return -1


def external_pipes(pids: Iterable[int]) -> list[ExternalPipe]:
    """Pipes the tree holds only one end of (the other end is outside, or already closed).

    A pipe whose both ends are in the tree is CRIU's business alone. Only the
    access mode of each fd tells the ends apart (both ends show the same
    ``pipe:[INO]``), which is exactly what CRIU records as the pipe's flags.
    """
    seen: dict[str, tuple[set[int], list[tuple[int, int]]]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if not KEY_RE.match(target):
                    continue
                modes, holders = seen.setdefault(target, (set(), []))
                modes.add(_access(pid, fd))
                holders.append((pid, int(fd)))
    out = []
    for key, (modes, holders) in sorted(seen.items()):
        if modes == {os.O_WRONLY}:
            out.append(ExternalPipe(key, PIPE_WRITE, tuple(holders)))
        elif modes == {os.O_RDONLY}:
            out.append(ExternalPipe(key, PIPE_READ, tuple(holders)))
    return out


def open_relays(specs: Iterable[tuple[str, str]]) -> tuple[dict[str, int], list[tuple[str, str, int]]]:
    """New pipes for ``(key, direction)``: the container's ends (inherit_fd) and the keeper's ends.

    The caller owns every fd returned (close them after handing them over).
    """
    inherit: dict[str, int] = {}
    relays: list[tuple[str, str, int]] = []
    try:
        for key, direction in specs:
            if not KEY_RE.match(key) or direction not in (PIPE_READ, PIPE_WRITE):
                from ctconsole.errors import CtError

                raise CtError(f"bad pipe relay {key!r} ({direction!r})")
            r, w = os.pipe()
            mine, theirs = (w, r) if direction == PIPE_WRITE else (r, w)
            os.set_inheritable(mine, True)
            inherit[key] = mine
            relays.append((key, direction, theirs))
    except BaseException:
        close_all([*inherit.values(), *(fd for _, _, fd in relays)])
        raise
    return inherit, relays


def close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
