"""Classify an fd by its ``/proc/PID/fd/N`` link text, the way CRIU dispatches it (digest §3.1, §3.5).

Why by link text first: readlink is one syscall and already tells sockets,
pipes and anon-inode kinds apart; only paths need a stat() to tell files,
devices, ttys and FIFOs apart, which the scanner does for container fds only.
"""

from __future__ import annotations

from ctconsole.model import NO_REMEDY, External, FdRef, SpecialFd

#: anon-inode name (as in ``anon_inode:[NAME]`` / ``anon_inode:NAME``) -> (kind, CRIU can dump it)
ANON_KINDS: dict[str, tuple[str, bool]] = {
    "eventfd": ("eventfd", True),
    "signalfd": ("signalfd", True),
    "timerfd": ("timerfd", True),
    "eventpoll": ("epoll", True),
    "inotify": ("inotify", True),
    "fanotify": ("fanotify", True),
    "pidfd": ("pidfd", True),
    "io_uring": ("io_uring", False),
    "perf_event": ("perf_event", False),
    "userfaultfd": ("userfaultfd", False),
    "bpf-map": ("bpf", False),  # needs a CRIU built with libbpf, which this build is not
    "bpf-prog": ("bpf", False),
    "bpf-link": ("bpf", False),
    "bpf_link": ("bpf", False),
    "bpf-iter": ("bpf", False),
    "bpf_iter": ("bpf", False),
}

_UNSUPPORTED_WHY = {
    "io_uring": "CRIU cannot pass an io_uring fd out of the process (and cannot dump its ring mapping)",
    "perf_event": "CRIU cannot dump perf_event fds",
    "userfaultfd": "CRIU cannot dump a userfaultfd",
    "bpf": "CRIU (this build has no libbpf) cannot dump BPF objects",
    "memfd_secret": "CRIU cannot dump memfd_secret memory",
    "other_anon": "CRIU has no dumper for this anonymous-inode fd",
}


def category(link: str) -> str:
    """socket, pipe, anon, nsfs, memfd, memfd_secret, path or other."""
    if link.startswith("socket:["):
        return "socket"
    if link.startswith("pipe:["):
        return "pipe"
    if link.startswith("anon_inode:") or link.startswith("pidfd:"):
        return "anon"
    if link.startswith("/memfd:"):
        return "memfd"
    if link.startswith("/secretmem"):
        return "memfd_secret"
    if link.startswith("/"):
        return "path"
    if ":[" in link:
        return "nsfs"  # net:[4026531840], mnt:[...] - namespace files
    return "other"


def link_inode(link: str) -> int:
    """``socket:[123]`` / ``pipe:[123]`` -> 123."""
    lb = link.find("[")
    try:
        return int(link[lb + 1 : -1]) if lb >= 0 else 0
    except ValueError:
        return 0


def anon_kind(link: str) -> tuple[str, bool]:
    """(kind, supported) for an anon-inode or pidfs link."""
    if link.startswith("pidfd:"):
        return "pidfd", True
    name = link[len("anon_inode:") :].strip("[]")
    return ANON_KINDS.get(name, ("other_anon", False))


def special(kind: str, target: str, supported: bool, holders: tuple[FdRef, ...]) -> SpecialFd:
    """A SpecialFd; the ones CRIU cannot dump carry an External with NO_REMEDY."""
    ext = None
    if not supported:
        why = _UNSUPPORTED_WHY.get(kind, "CRIU cannot dump it")
        ext = External(reason=f"{kind} fd ({target}): {why}", remedy=NO_REMEDY + " (close the fd first)")
    return SpecialFd(kind=kind, target=target, holders=holders, supported=supported, external=ext)


def pipe_item(target: str, holders: tuple[FdRef, ...], outside: list[str]) -> SpecialFd:
    """A pipe; external when another end is held outside (e.g. runtime stdio), restored via inherit_fd."""
    ext = None
    if outside:
        ext = External(
            reason=f"pipe shared with {', '.join(outside[:3])} outside the container "
            "(CRIU dumps it, but on restore the other end is a new pipe unless one is passed in)",
            remedy=f"inherit_fd {target} on restore (give the restored task the destination's end)",
            holder=outside[0],
        )
    return SpecialFd(kind="pipe", target=target, holders=holders, supported=True, external=ext)
