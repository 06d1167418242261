"""Which open character/block devices CRIU can dump (digest §3.2) and which are ttys (§3.3).

Why a table: CRIU decides by major (and sometimes minor) number, so we do the
same and say in operator words why a device blocks the dump.
"""

from __future__ import annotations

from ctconsole.model import NO_REMEDY, Device, External, FdRef

#: char majors the CRIU tty code handles (pts, ptmx, /dev/tty, console, VT, USB and low-density serial)
PTS_MAJORS = range(136, 144)
PTY_MASTER_MAJORS = range(128, 136)

#: (major, minor or None for any) -> name of a device CRIU cannot dump, for the reason text
_KNOWN_UNSUPPORTED = {
    (10, 229): "FUSE device /dev/fuse",
    (10, 232): "KVM (/dev/kvm)",
    (10, 237): "loop-control",
    (10, 238): "vhost-net",
    (10, 241): "vhost-vsock",
    (10, 196): "vfio",
    (195, None): "NVIDIA GPU",
    (226, None): "DRM/GPU (/dev/dri)",
    (13, None): "input device",
    (116, None): "sound device",
    (4, None): "legacy serial port (ttyS)",
    (189, None): "USB device",
    (10, 183): "hardware RNG",
}


def tty_kind(major: int, minor: int) -> str | None:
    """The tty kind CRIU's tty code handles, or None when it is not such a tty."""
    if major in PTS_MAJORS:
        return "pts"
    if major in PTY_MASTER_MAJORS:
        return "ptmx"
    if major == 5:
        return {0: "other", 1: "console", 2: "ptmx"}.get(minor)
    if major == 4 and minor < 64:
        return "vt"
    if major in (188, 204):
        return "serial"
    return None


def char_supported(major: int, minor: int, own_netns: bool) -> tuple[bool, str]:
    """(supported, why not) for an open char device that is not a tty."""
    if major == 1:
        return True, ""  # mem class: null, zero, full, random, urandom, kmsg - reopened by path
    if (major, minor) == (10, 200):
        if own_netns:
            return True, ""
        return False, "/dev/net/tun is only dumped when the container has its own network namespace"
    if (major, minor) == (10, 235):
        return True, ""  # autofs: dumped as a regular file
    name = _KNOWN_UNSUPPORTED.get((major, minor)) or _KNOWN_UNSUPPORTED.get((major, None))
    what = name or f"char device {major}:{minor}"
    return False, f"CRIU cannot dump an open {what} (no plugin for it)"


def make_device(
    path: str, is_block: bool, major: int, minor: int, own_netns: bool, holders: tuple[FdRef, ...]
) -> Device:
    """A Device item; unsupported devices carry an External saying why (NO_REMEDY: close the fd)."""
    if is_block:
        ok, why = False, "CRIU cannot dump an open block device"
    else:
        ok, why = char_supported(major, minor, own_netns)
    ext = None
    if not ok:
        ext = External(reason=f"{path} ({major}:{minor}): {why}", remedy=NO_REMEDY + " (close the fd first)")
    return Device(
        path=path,
        kind="block" if is_block else "char",
        major=major,
        minor=minor,
        supported=ok,
        holders=holders,
        external=ext,
    )
