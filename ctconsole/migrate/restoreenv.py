"""The restore environment: what a restore needs besides the images, provided the same way on either host.

Why one module: the remap rules ask for fds the restored tree inherits
(``connect-unix`` sockets, ``open-file`` files, new stdio pipes for pipes
whose other end is outside the tree) and for ``setup-namespaces`` actions
(VF moves). The destination agent provides them before and during its
restore; a sequential rollback or crash recovery restores on the source and
must provide exactly the same, or the rolled-back container comes back
without its sockets, files and devices. :class:`RestoreEnv` is what the
engine journals and sends; :func:`open_inherited` and
:func:`setup_namespaces` carry it out on whichever host restores;
:func:`restore_here` is the source-side restore.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctconsole import process
from ctconsole.errors import CtError
from ctconsole.migrate import pipes
from ctconsole.migrate.keeper import KeeperError, restore_with_parent
from ctconsole.model import Container
from ctconsole.proto import agent_pb2
from ctconsole.remap import vf
from ctconsole.remap.compile import (
    CONNECT_UNIX,
    FILE_OPEN_FLAGS,
    KEEP_PTY_MASTER,
    MOVE_VF,
    OPEN_FILE,
    CompiledOptions,
    InheritSpec,
    open_inherit_fds,
)

log = logging.getLogger("ctconsole.agent")

#: interface and PF names a setup-namespaces action may name
IFNAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class Refused(CtError):
    """A request the agent will not carry out; becomes an Error reply with ``code``."""

    def __init__(self, code: str, message: str, details: list[str] | None = None) -> None:
        super().__init__(message, details)
        self.code = code



def open_inherited(specs: list[tuple[str, str, str]] | list[tuple[str, str, str, str, int]]) -> dict[str, int]:
    """Open the fds a restore inherits: ``(key, how, path[, mode, perm])``.

    Why here: the other end of an external socket (a host daemon) and the
    file a ``file`` rule names are on the destination, so the destination
    opens them: ``connect-unix`` connects a fresh stream socket to ``path``
    (CRIU plugs it in where the container's old socket was); ``open-file``
    opens ``path`` with ``mode`` (remap.compile.FILE_OPEN_FLAGS; a file it
    creates gets ``perm``, CRIU compares the bits with the original's).
    """
    out: dict[str, int] = {}
    try:
        for spec in specs:
            key, how, path = spec[0], spec[1], spec[2]
            mode, perm = (str(spec[3]), int(spec[4])) if len(spec) > 3 else ("", -1)
            if not re.fullmatch(r"[A-Za-z0-9_:\[\]./-]{1,200}", key):
                raise Refused("bad-request", f"bad inherit_fd key {key!r}")
            if how not in ("connect-unix", OPEN_FILE):
                raise Refused("unsupported", f"inherit_fd {key}: cannot provide {how!r}")
            if not os.path.isabs(path):
                raise Refused("bad-request", f"inherit_fd {key}: path must be absolute")
            if how == OPEN_FILE:
                if (mode or "append") not in FILE_OPEN_FLAGS or not -1 <= perm <= 0o7777:
                    raise Refused("bad-request", f"inherit_fd {key}: bad open mode {mode!r} / perm {perm}")
                try:
                    out[key] = open_inherit_fds([InheritSpec(key=key, how=how, path=path, mode=mode or "append",
                                                             perm=perm)])[key]
                except CtError as exc:
                    raise Refused("failed", exc.message) from exc
                continue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            try:
                s.connect(path)
            except OSError as exc:
                s.close()
                raise Refused("failed", f"cannot connect to {path} for {key}: {exc}") from exc
            fd = s.detach()
            os.set_inheritable(fd, True)
            out[key] = fd
    except BaseException:
        for fd in out.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        raise
    return out


def setup_namespaces(actions: list[agent_pb2.SetupNsAction], pid: int) -> list[str]:
    """Carry out remap setup-namespaces actions for the restored root ``pid``; returns "VF->IF" notes.

    Why in the notify: only then does the restored netns exist while still
    empty (criu-digest §5.2), and a VF pool names no device in advance:
    whichever VF is free *now* on this host is taken. ``CTCONSOLE_SYSFS_ROOT``
    (tests only) points the VF scan at a fake sysfs tree whose "VF" netdev is
    a veth: moving a link is the same netlink request for any link kind.
    """
    if pid <= 0:
        raise CtError("setup-namespaces came without the restored root pid")
    sys_root = os.environ.get("CTCONSOLE_SYSFS_ROOT", "/sys")
    moved: list[str] = []
    taken: list[str] = []
    for a in actions:
        if a.action != "move-vf":
            raise CtError(f"unknown setup-namespaces action {a.action!r}")
        if not IFNAME_RE.fullmatch(a.interface) or len(a.interface) > 15 or not IFNAME_RE.fullmatch(a.pf):
            raise CtError(f"bad interface or PF name in move-vf ({a.interface!r}, {a.pf!r})")
        pool = vf.VfPool(pf=a.pf, vfs=None if a.any_vf else tuple(a.vfs))
        chosen = vf.pick_free_vf(pool, sys_root=sys_root, exclude=tuple(taken))
        vf.move_link_to_netns(chosen.netdev, pid, new_name=a.interface)
        taken.append(chosen.netdev)
        moved.append(f"{chosen.netdev}->{a.interface}")
        log.info("moved VF %d of %s (%s) into pid %d's netns as %s", chosen.index, a.pf, chosen.netdev, pid,
                 a.interface)
    return moved


@dataclass
class RestoreEnv:
    """The fds a restore inherits and the setup-namespaces actions, as JSON-ready dicts.

    ``inherit``: ``{"key", "how", "path"[, "mode", "perm"]}`` (``how`` is
    ``connect-unix``, ``open-file`` or :data:`pipes.HOW`); ``setup_ns``: the
    fields of ``agent_pb2.SetupNsAction``. Journaled with the options, sent
    in the RestoreRequest, and read back by :func:`restore_here`.
    """

    inherit: list[dict[str, Any]] = field(default_factory=list)
    setup_ns: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, container: Container, comp: CompiledOptions | None) -> RestoreEnv:
        """From the compiled rules (once, with the destination) and the tree's external stdio pipes.

        Raises CtError when the rules need an fd or an action no agent can provide.
        """
        env = cls()
        if comp is not None:
            unsupported = [i.key for i in comp.inherit if i.how not in (KEEP_PTY_MASTER, CONNECT_UNIX, OPEN_FILE)]
            unsupported += [f"{a.action} {a.interface}" for a in comp.setup_ns_actions if a.action != MOVE_VF]
            if unsupported:
                raise CtError("the rules need inherited fds or actions the agent cannot provide: "
                              + ", ".join(unsupported))
            for i in comp.inherit:
                if i.how == CONNECT_UNIX:
                    env.inherit.append({"key": i.key, "how": i.how, "path": i.path})
                elif i.how == OPEN_FILE:
                    env.inherit.append({"key": i.key, "how": i.how, "path": i.path, "mode": i.mode or "append",
                                        "perm": i.perm})
            env.setup_ns.extend({"action": a.action, "interface": a.interface, "pf": a.pf,
                                 "vfs": list(a.vfs or ()), "any_vf": a.vfs is None} for a in comp.setup_ns_actions)
        # stdio pipes held by a runtime outside the tree (runc's descriptors.json case): new pipes
        # on the destination, kept by the restore parent (migrate/pipes.py)
        have = {i["key"] for i in env.inherit}
        for xp in pipes.external_pipes([p.pid for p in container.processes] or process.descendants(container.init_pid)):
            if xp.key not in have:
                env.inherit.append(xp.spec())
                env.notes.append(f"{xp.key} (pid {xp.holders[0][0]} fd {xp.holders[0][1]}): its other end is "
                                 "outside the container; a new pipe is made on the destination and its other "
                                 + ("end is logged by the restore parent" if xp.direction == "write"
                                    else "end is held open by the restore parent"))
        return env

    @classmethod
    def from_journal(cls, options: dict[str, Any]) -> RestoreEnv:
        """Read back from a journal ``options`` record (rollback, recovery)."""
        return cls(inherit=list(options.get("inherit", [])), setup_ns=list(options.get("setup_ns", [])))

    def inherit_msgs(self) -> list[agent_pb2.InheritFd]:
        return [agent_pb2.InheritFd(**i) for i in self.inherit]

    def setup_ns_msgs(self) -> list[agent_pb2.SetupNsAction]:
        return [agent_pb2.SetupNsAction(**a) for a in self.setup_ns]


def restore_here(images: Path, restore: dict[str, Any], tree: list[int], env: RestoreEnv) -> int:
    """Restore a released tree back on this host from its kept images (sequential rollback, recovery).

    The rules' inherited fds and VF moves are provided here exactly as the
    agent would on the destination (the same helpers), so a rolled-back
    container gets its sockets, files and devices back.
    """
    actions = env.setup_ns_msgs()

    def on_note(script: str, pid: int) -> bool:
        if script == "setup-namespaces" and actions:
            setup_namespaces(actions, int(pid or 0))
        return True

    for pid in tree:
        if not process.wait_free(pid, 20.0):
            raise CtError(f"pid {pid} of the source tree is still present after 20 s")
    for name in ("restore.log", "stats-restore"):
        with contextlib.suppress(OSError):
            (images / name).unlink()
    fds = open_inherited([(i["key"], i["how"], i["path"], str(i.get("mode", "")), int(i.get("perm", -1)))
                          for i in env.inherit if i["how"] != pipes.HOW])
    relays: list[tuple[str, str, int]] = []
    try:
        ends, relays = pipes.open_relays([(i["key"], str(i.get("mode", ""))) for i in env.inherit
                                          if i["how"] == pipes.HOW])
        fds.update(ends)
        # through a keeper, like the agent: it stays the root's parent (parent-death signals)
        res = restore_with_parent(dict(restore), images, fds, relays, images.parent.name, timeout=120,
                                  on_note=on_note)
    except KeeperError as exc:
        raise CtError(exc.message, exc.details) from exc
    finally:
        pipes.close_all([*fds.values(), *(fd for _, _, fd in relays)])
    return res.pid
