"""CRIU log lines -> operator sentences (ctconsole.criu.errors)."""

from __future__ import annotations

import pytest

from ctconsole.criu.errors import error_lines, explain, is_harmless, rule_for

LINES = [
    ("7: Error (criu/files-reg.c:2295): File fd/12 has bad mode 0100600 (expect 0100644)", "file-validation"),
    ("7: Error (criu/files-reg.c:2175): File fd/12 has bad size 0 (expect 4096)", "file-validation"),
    ("(00.05) Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/lab/out.log", "external-file"),
    ("(00.1) Error (criu/tty.c:2399): tty: Unable to find a master for /4", "tty-external-master"),
    ("Error (criu/mount.c:753): mnt: 121:./proc/meminfo doesn't have a proper root mount", "bind-mount-external"),
    ("(00.2) Error (criu/seize.c:1): Unseizable non-zombie 1234 found, state t, err -1/0", "traced"),
    ("Error (criu/file-lock.c:1): Some file locks are hold by dumping tasks! You can try --file-locks", "file-lock"),
    ("Error (criu/files-reg.c:1): Can't dump ghost file /tmp/x of 3145728 size, increase limit", "deleted-file"),
    ("Error (criu/net.c:1): Unsupported link 5 (type 1 kind vxlan)", "netdev-kind"),
    ("Error (criu/net.c:1): net: a macvlan parent for mv0 is required", "macvlan"),
    ("Error (criu/files-reg.c:1): Can't create link remap for /tmp/a. Use link-remap option.", "unlinked-linked-file"),
    (
        "Error (criu/sk-unix.c:874): unix: External socket is used. Consider using --ext-unix-sk option.",
        "unix-external",
    ),
    (
        "Error (criu/sk-unix.c:881): unix: Can't dump half of stream unix connection. name: (null)",
        "unix-stream-external",
    ),
    ("Error (criu/namespaces.c:460): Can't dump nested pid namespace for 28815", "nested-namespace"),
    ("(00.03) 7353: Error (criu/cr-restore.c:1): Can't fork for 7353: File exists", "pid-busy"),
    ("Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted", "harmless"),
    ("Error (criu/files.c:1): Can't dump file 5 of that type [20600] (chr 10:232)", "unsupported-fd"),
    ("Error (criu/sk-inet.c:1): Connected TCP socket, consider using --tcp-established option.", "tcp-established"),
    ("Error (criu/sockets.c:1): sockets: Can't get 1:16 opt: Operation not supported", "criu-kernel-inet"),
    ("7: Error (criu/tty.c:625): tty: Unable to open dev/pts/ptmx with specified index 2", "tty-index-busy"),
    ("Error: Invalid rtm_flags - can not contain DEAD or LINKDOWN.", "route-linkdown"),
    ("8541: Error (criu/net.c:1927): net: Can't restore link: -17", "veth-external"),
    (
        "7353: Error (criu/sk-unix.c:1912): unix: External socket found in image. Consider using the --ext-unix-sk",
        "unix-stream-external",
    ),
    ("Error (criu/cr-dump.c:1664): A session leader of 13074(1) is outside of its pid namespace", "session"),
    # issue #11 (each also produced by the real CRIU in tests/integration/test_feasibility_errors.py)
    ("(00.04) Error (criu/sk-unix.c:418): unix: Unix socket 2057 without peer 2004", "unix-peer-netns"),
    ("Error (criu/sk-unix.c:525): unix: Found a closed in-flight socket to 0x1a2b", "unix-in-flight"),
    ("Error (criu/sk-unix.c:506): unix: Non-empty write queue on an in-flight socket 0x1947d", "unix-in-flight"),
    ("Error (criu/sk-inet.c:504): inet: Can't dump corked dgram socket 19cda", "udp-corked"),
    ("Error (criu/pidfd.c:88): PIDFD_THREAD flag is currently not supported", "pidfd"),
    ("Error (criu/pidfd.c:97): pidfd pid 4242 is not a part of process tree..", "pidfd"),
    ("Error (criu/sk-netlink.c:76): netlink: The socket has data to read", "netlink-socket"),
    ("Error (criu/sk-netlink.c:133): netlink: The netlink socket 0x1f has more than 32 groups", "netlink-socket"),
    ("Error (criu/sk-packet.c:71): packet: Multiple MC membership not supported (but can be)", "packet-socket"),
    ("(00.03) Error (criu/cr-dump.c:389): Can't get rlimit 0: Operation not permitted", "creds-rlimit"),
    ("(00.03) Error (criu/cr-dump.c:1584): Dump core (pid: 1986) failed with -1", "summary"),
    ("Error (criu/sk-inet.c:185): inet: In-flight connection (l) for 1b2c", "tcp-in-flight"),
    ("12873: Error (criu/sk-inet.c:912): inet: Connected TCP socket in image", "tcp-established"),
]


@pytest.mark.parametrize(("line", "rule"), LINES)
def test_known_lines(line: str, rule: str) -> None:
    assert rule_for(line) == rule
    text = explain(line)
    assert text and len(text) > 20 and "{" not in text


def test_placeholders_filled() -> None:
    text = explain("Error (criu/net.c:1): Unsupported link 5 (type 1 kind vxlan)")
    assert text is not None and "vxlan" in text
    text = explain("Error (criu/x.c:1): Can't fork for 4242: File exists")
    assert text is not None and "4242" in text


def test_unknown_line() -> None:
    assert explain("(00.1) Error (criu/x.c:1): something new") is None


def test_error_lines_drop_harmless() -> None:
    log = "\n".join(
        [
            "(00.01) Error (criu/util.c:1533): rlimit: Can't setup RLIMIT_NOFILE for self",
            "(00.02) Warn  (criu/net.c:534): net: The eth0 veth is in an external netns",
            "(00.03) Error (criu/tty.c:2399): tty: Unable to find a master for /0",
        ]
    )
    assert error_lines(log) == ["(00.03) Error (criu/tty.c:2399): tty: Unable to find a master for /0"]
    assert is_harmless(log.splitlines()[0])
