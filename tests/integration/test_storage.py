"""Storage that follows the container: real rsync over a real (throwaway) sshd on loopback.

The "destination" decisions (:func:`storage.decide`) run in this process with
their own state dir, exactly as the agent runs them; the bytes go through the
ssh control master the way a migration sends them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctconsole.migrate import storage
from tests.support_hosts import Sshd, ssh_control_master, throwaway_sshd


@pytest.fixture
def sshd(tmp_path: Path, needs_root: None) -> Iterator[Sshd]:
    with throwaway_sshd(tmp_path, "127.0.0.1") as s:
        yield s


@pytest.fixture
def mux(tmp_path: Path, sshd: Sshd) -> Iterator[tuple[list[str], str]]:
    """A control master like the agent channel's; yields rsync's remote shell argv and target."""
    ctl = tmp_path / "ctl"
    with ssh_control_master(sshd, ctl) as opts:
        yield (["ssh", *opts, "-o", f"ControlPath={ctl}", "-o", "BatchMode=yes", "-p", str(sshd.port)],
               "root@127.0.0.1")


@pytest.fixture
def dest_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "dest-state"
    monkeypatch.setenv("CTCONSOLE_STATE_DIR", str(d))
    return d


def make_tree(root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").write_text("box\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(os.urandom(300_000))
    os.chmod(root / "bin" / "tool", 0o4755)
    os.link(root / "bin" / "tool", root / "bin" / "tool-link")
    os.symlink("tool", root / "bin" / "alias")
    (root / "data").mkdir(mode=0o700)
    os.chown(root / "data", 1234, 5678)
    (root / "data" / "big").write_bytes(os.urandom(2 << 20))


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, bytes | str]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            body: bytes | str = ""
            if p.is_symlink():
                body = os.readlink(p)
            elif p.is_file():
                body = p.read_bytes()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, body)
    return out


def test_full_sync_then_frozen_delta_over_ssh(tmp_path: Path, mux: tuple[list[str], str], dest_state: Path) -> None:
    src = tmp_path / "rootfs"
    make_tree(src)
    item = storage.describe("root", src)
    assert item.files == 3 and item.bytes == (2 << 20) + 300_000 + len("box\n"), "a hard link counts once"
    targets, problems, free = storage.decide("mig-1", "auto", [item], source_boot="another-kernel")
    assert not problems and free > 0
    (t,) = targets
    assert t.action == "carry" and t.path == str(dest_state / "storage" / "mig-1" / "0")
    seen: list[tuple[int, int]] = []
    full = storage.sync(item, t, mux, final=False, progress=lambda d, tot, r: seen.append((d, tot)))
    assert full.bytes_sent >= item.bytes and full.bytes_total >= item.bytes  # urandom does not compress
    assert seen and seen[-1][0] == item.bytes, "progress reaches the total"
    assert snapshot(Path(t.path)) == snapshot(src), "owners, modes, set-id bits, hard links, symlinks kept"
    # the container writes on; the frozen delta moves only that
    (src / "etc" / "hostname").write_text("box2\n")
    (src / "data" / "new").write_bytes(b"x" * 1000)
    (src / "bin" / "alias").unlink()
    delta = storage.sync(item, t, mux, final=True)
    assert delta.bytes_sent < 100_000, f"the delta re-sent {delta.bytes_sent} bytes"
    assert snapshot(Path(t.path)) == snapshot(src)
    assert storage.discard("mig-1")
    assert not (dest_state / "storage" / "mig-1").exists(), "rollback leaves nothing of the copy"


def test_destination_decides_shared_or_carried(tmp_path: Path, dest_state: Path) -> None:
    src = tmp_path / "vol"
    src.mkdir()
    (src / "f").write_text("x")
    same = storage.describe("root", src)
    # the very same directory on the same kernel (local / netns destination): nothing copied
    targets, problems, _ = storage.decide("m2", "auto", [same], source_boot=storage.boot_id())
    assert not problems and targets[0].action == "shared" and targets[0].path == str(src)
    # the same path on another kernel: a different copy, so the source's is carried (never trusted)
    targets, _, _ = storage.decide("m2", "auto", [same], source_boot="other", dry_run=True)
    assert targets[0].action == "carry"
    # an identical marker (shared storage seen by both hosts): nothing copied
    (src / storage.MARKER).write_text("pool-7f3a\n")
    marked = storage.describe("root", src)
    assert marked.marker == "pool-7f3a"
    targets, _, _ = storage.decide("m2", "auto", [marked], source_boot="other", dry_run=True)
    assert targets[0].action == "shared" and "marker" in targets[0].reason
    # --storage copy carries even then; dry runs create nothing
    targets, _, _ = storage.decide("m2", "copy", [marked], source_boot=storage.boot_id(), dry_run=True)
    assert targets[0].action == "carry"
    assert not (dest_state / "storage").exists()
    # --storage shared with a path that is not here is a blocker
    gone = storage.Item("root", str(tmp_path / "nowhere"))
    _, problems, _ = storage.decide("m2", "shared", [gone], source_boot="other", dry_run=True)
    assert problems and "does not exist here" in problems[0]


def test_no_room_is_a_problem(tmp_path: Path, dest_state: Path) -> None:
    big = storage.Item("root", str(tmp_path / "huge"), bytes=1 << 60, files=1)
    _, problems, free = storage.decide("m3", "auto", [big], source_boot="other")
    assert problems and "not enough room" in problems[0], problems
    assert free < 1 << 60
    assert not (dest_state / "storage" / "m3").exists(), "nothing made when it cannot fit"


def test_failed_sync_is_a_clear_error(tmp_path: Path, mux: tuple[list[str], str], dest_state: Path) -> None:
    src = tmp_path / "rootfs"
    make_tree(src)
    item = storage.describe("root", src)
    bad = storage.Target("root", "carry", str(tmp_path / "is-a-file"))
    Path(bad.path).write_text("not a directory")
    with pytest.raises(storage.StorageError) as err:
        storage.sync(item, bad, mux, final=True)
    assert "rsync" in err.value.message and err.value.details


def test_restore_opts_point_at_the_copies() -> None:
    items = [storage.Item("root", "/srv/ct"), storage.Item(storage.mount_key("/srv/data"), "/srv/data"),
             storage.Item(storage.mount_key("/srv/shared"), "/srv/shared")]
    targets = [storage.Target("root", "carry", "/var/lib/ctconsole/storage/m/0"),
               storage.Target(storage.mount_key("/srv/data"), "carry", "/var/lib/ctconsole/storage/m/1"),
               storage.Target(storage.mount_key("/srv/shared"), "shared", "/srv/shared")]
    opts = storage.rewrite_restore_opts(
        {"root": "/srv/ct", "external": ["mnt[data]:/srv/data", "mnt[sh]:/srv/shared", "veth[a]:b"]}, items, targets)
    assert opts == {"root": "/var/lib/ctconsole/storage/m/0",
                    "external": ["mnt[data]:/var/lib/ctconsole/storage/m/1", "mnt[sh]:/srv/shared", "veth[a]:b"]}
