"""Parsers of /proc text: odd comm names, NSpid, pending SIGTRAP, mountinfo escapes, fdinfo, locks."""

from __future__ import annotations

import os

from ctconsole.inventory import procfs


def test_parse_stat_with_spaces_and_parens_in_comm() -> None:
    line = "1234 (my (odd) comm) S 1200 1234 1234 34816 1234 4194560 1 0 0 0 0 0 0 0 20 0 3 0 99 0 0"
    st = procfs.parse_stat(1234, line)
    assert st is not None
    assert st.comm == "my (odd) comm"
    assert (st.state, st.ppid, st.pgid, st.sid, st.tty_nr, st.threads) == ("S", 1200, 1234, 1234, 34816, 3)


def test_parse_stat_garbage_is_none() -> None:
    assert procfs.parse_stat(1, "nonsense") is None


def test_parse_status_nspid_tracer_and_sigtrap() -> None:
    text = (
        "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nTracerPid:\t77\nNSpid:\t4242\t1\n"
        "SigPnd:\t0000000000000000\nShdPnd:\t0000000000000010\n"
    )
    st = procfs.parse_status(text)
    assert st.nspid == (4242, 1)
    assert st.tracer_pid == 77 and st.uid == 1000
    assert st.sigpnd_trap


def test_parse_mountinfo_escapes_and_optional_fields() -> None:
    text = (
        "36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue\n"
        "40 36 0:21 /sys/net/ipv4 /proc/sys/net/ipv4 rw - proc proc rw\n"
    )
    a, b = procfs.parse_mountinfo(text)
    assert a.mountpoint == "/mnt with space" and a.root == "/mnt1"
    assert a.propagation == "master:1 shared:7" and a.fstype == "ext3" and a.source == "/dev/root"
    assert (a.major, a.minor) == (98, 0)
    assert b.propagation == "" and b.fstype == "proc" and b.root == "/sys/net/ipv4"


def test_parse_fdinfo() -> None:
    text = (
        "pos:\t0\nflags:\t0100002\nmnt_id:\t31\nino:\t5\ntty-index:\t3\n"
        "lock:\t1: FLOCK  ADVISORY  WRITE 99 00:2a:5 0 EOF\n"
    )
    info = procfs.parse_fdinfo(text)
    assert info.flags == 0o100002 and info.mnt_id == 31 and info.tty_index == 3
    assert len(info.locks) == 1


def test_parse_ns_link() -> None:
    assert procfs.parse_ns_link("net:[4026531840]") == 4026531840
    assert procfs.parse_ns_link("bogus") == 0


def test_readers_on_a_vanished_pid_return_nothing() -> None:
    pid = 2**22 + 12345  # beyond pid_max: never exists
    assert procfs.read_stat(pid) is None
    assert procfs.read_status(pid) is None
    assert procfs.list_fds(pid) is None
    assert procfs.read_mountinfo(pid) is None
    assert procfs.namespaces(pid) == {}
    assert procfs.read_cmdline(pid) == ""


def test_own_process_is_readable() -> None:
    st = procfs.read_stat(os.getpid())
    assert st is not None and st.ppid == os.getppid()
    fds = procfs.list_fds(os.getpid())
    assert fds is not None and any(fd == 0 for fd, _ in fds)


def test_parse_locks_including_blocked_waiters() -> None:
    text = (
        "1: POSIX  ADVISORY  WRITE 1234 08:01:12345 0 EOF\n"
        "1: -> POSIX  ADVISORY  WRITE 1300 08:01:12345 0 EOF\n"
        "2: FLOCK  ADVISORY  WRITE 99 00:2a:77 0 EOF\n"
    )
    assert procfs.parse_locks(text) == {(8, 1, 12345), (0, 0x2A, 77)}
