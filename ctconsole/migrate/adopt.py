"""After a restore on the destination: hand the container to its runtime there, or say plainly why not.

Why: CRIU restores a process tree, not a runtime's bookkeeping. Without this a
runc container migrated here is invisible to ``runc list`` and its name is lost;
an LXC or libvirt-lxc one looks like an anonymous namespace tree. Each runtime
is different:

- **runc** keeps a container entirely in ``ROOT/ID/state.json`` (runc exits
  after start; nothing else holds the container). ``runc list`` re-reads it
  and calls the container running when ``init_process_pid`` is alive with the
  recorded ``init_process_start``; ``runc kill`` signals that pid. So adopting
  = the source's state with the restored pid, its start time, its namespace
  paths and the root it was restored into. ``hooks`` are dropped: they are
  commands the *source* wrote, and ``runc delete`` would run them here.
- **LXC** drives a container through the monitor process ``lxc-start`` forks
  (``lxc-stop``/``lxc-info`` talk to its command socket). A monitor cannot be
  attached to a running tree; only LXC's own restore (``lxc-checkpoint -r``)
  starts one. Writing the config would be worse than nothing: ``lxc-ls`` would
  show it STOPPED and ``lxc-start`` would start a second copy. Not adopted.
- **libvirt-lxc**: the ``libvirt_lxc`` controller only starts new containers,
  and libvirt has no LXC save/restore at all. Not adopted.
- **plain namespaces** have no runtime; nothing to adopt.

Every restored container also gets a small record in ``RUN/adopted/ID.json``
(runtime, id, name, pid + start time, what to tell the operator), which the
inventory reads (``ctconsole/inventory/runtimes/adopted.py``) so ``list`` and
``show`` on this host give the same name and runtime as on the source, and
``show`` says when the runtime does not manage it, how to stop it and how to
move it back.

The destination never trusts its peer: the facts come from the source, so
:func:`RuntimeFacts.from_json` validates every field (id syntax, known runc
roots only, sizes), and :func:`plan` takes the pid, start time and root from
the destination's own restore, never from the facts. :func:`plan` is pure;
:func:`apply` writes, :func:`undo` removes exactly what :func:`apply` wrote.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ctconsole.errors import CtError

if TYPE_CHECKING:
    from ctconsole.model import Container

RUNTIMES = ("runc", "lxc", "libvirt-lxc", "namespaces", "nspawn", "tree")
#: runc state roots the destination agrees to write into (as the inventory reads them)
RUNC_ROOTS = ("/run/runc", "/run/docker/runtime-runc/moby", "/run/containerd/runc/*", "/run/runc-ctrs")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
_NAME_RE = re.compile(r"^[^\x00-\x1f/]{1,128}$")
MAX_FACTS = 1 << 20


class AdoptError(CtError):
    """The runtime facts from the source are not acceptable (or adoption could not be written)."""


@dataclass(frozen=True)
class RuntimeFacts:
    """What the source knows about the container's runtime, sent to the destination as JSON.

    ``runc_state`` is runc's state.json on the source (runc only); ``runc_root``
    the directory it was in; ``source`` is how the operator reaches the source
    host from the destination, when known ("" otherwise), for the "move it back" hint.
    """

    runtime: str
    id: str
    name: str
    root_path: str = ""
    runc_root: str = ""
    runc_state: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "runtime": self.runtime,
                "id": self.id,
                "name": self.name,
                "root_path": self.root_path,
                "runc_root": self.runc_root,
                "runc_state": self.runc_state,
                "source": self.source,
            },
            sort_keys=True,
        )

    @staticmethod
    def from_json(text: str | bytes) -> RuntimeFacts:
        """Parse and validate facts that came from the (untrusted) source."""
        if len(text) > MAX_FACTS:
            raise AdoptError(f"runtime facts are {len(text)} bytes (limit {MAX_FACTS})")
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise AdoptError(f"runtime facts are not JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise AdoptError("runtime facts must be a JSON object")
        strs = {k: d.get(k, "") for k in ("runtime", "id", "name", "root_path", "runc_root", "source")}
        for k, v in strs.items():
            if not isinstance(v, str) or len(v) > 4096 or "\x00" in v:
                raise AdoptError(f"runtime facts: bad {k}")
        state = d.get("runc_state") or {}
        if not isinstance(state, dict):
            raise AdoptError("runtime facts: runc_state must be an object")
        facts = RuntimeFacts(runc_state=state, **strs)
        facts.validate()
        return facts

    def validate(self) -> None:
        if self.runtime not in RUNTIMES:
            raise AdoptError(f"runtime facts: unknown runtime {self.runtime!r}")
        if not _ID_RE.match(self.id):
            raise AdoptError(f"runtime facts: bad container id {self.id!r}")
        if not _NAME_RE.match(self.name):
            raise AdoptError(f"runtime facts: bad container name {self.name!r}")
        if self.runtime == "runc":
            root = os.path.normpath(self.runc_root or "/")
            if root != self.runc_root.rstrip("/") or not any(fnmatch.fnmatchcase(root, g) for g in RUNC_ROOTS):
                raise AdoptError(
                    f"runtime facts: runc root {self.runc_root!r} is not one this host writes",
                    [f"known: {', '.join(RUNC_ROOTS)}"],
                )
            if self.runc_state and self.runc_state.get("id") != self.id:
                raise AdoptError("runtime facts: runc state is for another container")


@dataclass(frozen=True)
class StateFile:
    """One file adoption writes (absolute path on the destination)."""

    path: str
    content: str
    mode: int = 0o600


@dataclass(frozen=True)
class Adoption:
    """What adopting the restored container means here: files to write and what to tell the operator."""

    runtime: str
    id: str
    name: str
    pid: int
    start: int
    adopted: bool  # the runtime manages it now (runc list/kill work)
    note: str  # one or two sentences for `show` and the console
    stop: str  # how to stop it here
    back: str  # how to move it back
    files: tuple[StateFile, ...] = ()

    def record(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "id": self.id,
            "name": self.name,
            "pid": self.pid,
            "start": self.start,
            "adopted": self.adopted,
            "note": self.note,
            "stop": self.stop,
            "back": self.back,
        }


def _runc_state(facts: RuntimeFacts, pid: int, start: int, root: str) -> dict[str, Any]:
    st = copy.deepcopy(facts.runc_state)
    old_start = st.get("init_process_start")
    st["id"] = facts.id
    st["init_process_pid"] = pid
    st["init_process_start"] = str(start) if isinstance(old_start, str) else start
    paths = st.get("namespace_paths")
    if isinstance(paths, dict):
        st["namespace_paths"] = {
            k: re.sub(r"^/proc/[0-9]+/", f"/proc/{pid}/", v) if isinstance(v, str) else v for k, v in paths.items()
        }
    cfg = st.get("config")
    if isinstance(cfg, dict):
        cfg["rootfs"] = root
        cfg["hooks"] = None  # commands from the source: never run them here
    st.pop("external_descriptors", None)  # the source's pipes: the restored fds are the keeper's
    return st


def plan(facts: RuntimeFacts, pid: int, start: int, root: str, record_dir: str) -> Adoption:
    """What to write so this host's runtime (and ctconsole's inventory) know the restored container.

    ``pid``/``start`` (start time in clock ticks, /proc/PID/stat field 22) and ``root`` come from the
    destination's own restore; ``record_dir`` is where ctconsole's adopted records live (RUN/adopted).
    """
    facts.validate()
    stop = f"kill -KILL {pid} (the init: its pid namespace and every process in it go with it)"
    back = (
        f"ctconsole migrate {facts.name} --to {facts.source} (run here)"
        if facts.source
        else f"ctconsole migrate {facts.name} --to ssh://root@SOURCE-HOST (run here)"
    )
    files: list[StateFile] = []
    adopted = False
    if facts.runtime == "runc" and facts.runc_state:
        state = _runc_state(facts, pid, start, root)
        files.append(StateFile(f"{facts.runc_root.rstrip('/')}/{facts.id}/state.json", json.dumps(state)))
        adopted = True
        note = f"adopted by runc (state in {facts.runc_root}/{facts.id}): `runc list` and `runc kill` work here"
        stop = f"runc --root {facts.runc_root} kill {facts.id} KILL && runc --root {facts.runc_root} delete {facts.id}"
    elif facts.runtime == "runc":
        note = "restored from a runc container whose state was not sent; runc on this host does not know it"
    elif facts.runtime == "lxc":
        note = (
            "not managed by LXC here: LXC drives a container through the monitor that lxc-start forks, "
            "which cannot attach to a restored tree, so lxc-ls/lxc-stop on this host do not know it"
        )
    elif facts.runtime == "libvirt-lxc":
        note = (
            "not managed by libvirt here: the libvirt_lxc controller only starts new containers and "
            "libvirt cannot adopt a running one, so virsh on this host does not know it"
        )
    else:
        adopted = True
        note = ""  # no runtime to hand it to
    adoption = Adoption(facts.runtime, facts.id, facts.name, pid, start, adopted, note, stop, back)
    rec = StateFile(f"{record_dir.rstrip('/')}/{facts.id}.json", json.dumps(adoption.record(), sort_keys=True))
    return dataclasses.replace(adoption, files=(*files, rec))


def apply(adoption: Adoption) -> list[str]:
    """Write the adoption's files (atomically, parents 0700); returns the paths written."""
    written: list[str] = []
    try:
        for f in adoption.files:
            d = os.path.dirname(f.path)
            os.makedirs(d, mode=0o700, exist_ok=True)
            tmp = f"{f.path}.ctconsole-tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, f.mode)
            with os.fdopen(fd, "w") as out:
                out.write(f.content)
            os.replace(tmp, f.path)
            written.append(f.path)
    except OSError as exc:
        undo(adoption)
        raise AdoptError(f"cannot record the restored container for {adoption.runtime}: {exc}") from exc
    return written


def undo(adoption: Adoption) -> None:
    """Remove what :func:`apply` wrote (and the per-container directories it made, when empty)."""
    for f in adoption.files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{f.path}.ctconsole-tmp")
        if os.path.basename(f.path) == "state.json":  # runc's ROOT/ID directory
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(f.path))


def start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks (what runc records as init_process_start); -1 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def adopt_restored(facts_json: str, pid: int, root: str, record_dir: str) -> Adoption:
    """The destination server's one call after a committed restore: validate, plan, write.

    Raises :class:`AdoptError` (a CtError) for unacceptable facts; the caller logs it and
    keeps the container running (adoption is bookkeeping, never a reason to roll back).
    """
    facts = RuntimeFacts.from_json(facts_json)
    a = plan(facts, pid, start_time(pid), root, record_dir)
    apply(a)
    return a


def gather(container: Container, source: str = "") -> RuntimeFacts:
    """The source side: the facts to send with the restore (runc: its state.json and root).

    ``source`` is how the destination reaches this host back, when the caller knows it.
    """
    from ctconsole.inventory.runtimes import runc

    root, state = "", dict[str, Any]()
    if container.runtime == "runc":
        found = runc.find_state(container.id)
        if found is not None:
            root, state = found[0], dict(found[1])
    return RuntimeFacts(
        runtime=container.runtime if container.runtime in RUNTIMES else "namespaces",
        id=container.id if _ID_RE.match(container.id) else re.sub(r"[^A-Za-z0-9_.+-]", "_", container.id)[:128],
        name=container.name,
        root_path=container.root_path,
        runc_root=root,
        runc_state=dict(state),
        source=source,
    )
