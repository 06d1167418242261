"""Which cgroups a migration may remove (ctconsole/migrate/cgroups.py): only the root it made, by its id."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctconsole.migrate import cgroups

MID = "20261204-203341-506d8029"


def test_root_path_is_what_made_by_accepts() -> None:
    path = cgroups.root_path("ctlab lxc/../x", MID)
    assert path == f"/ctconsole-ctlab_lxc_.._x-{MID}"
    assert cgroups.made_by(path, MID)


def test_made_by_refuses_anything_else() -> None:
    other = "20261204-203341-506d8030"
    for path in (f"/ctconsole-a-{other}",  # another migration's
                 f"/ctconsole-a-{MID}/child",  # below it: removed only as part of its root
                 f"/lxc/ctconsole-a-{MID}",  # not one level below the hierarchy's root
                 f"/ctconsole-a/../{MID}", f"/ctconsole-a-{MID}/..", "/", "", f"ctconsole-a-{MID}",
                 "/machine.slice", f"/ctconsole-{'x' * 41}-{MID}"):
        assert not cgroups.made_by(path, MID), path
    assert not cgroups.made_by("/ctconsole-a-*", "*")  # the id itself must have the journal's form


def test_remove_empty_touches_nothing_it_did_not_make(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A path of the wrong form returns at once, before any hierarchy is looked at."""
    called: list[int] = []

    def mounts() -> list[Path]:
        called.append(1)
        return [tmp_path]

    monkeypatch.setattr(cgroups, "mounts", mounts)
    (tmp_path / "machine.slice").mkdir()
    assert cgroups.remove_empty("/machine.slice", MID) == []
    assert called == [] and (tmp_path / "machine.slice").is_dir()
    # the root it made, empty, with an empty child: both go, deepest first
    (tmp_path / f"ctconsole-a-{MID}" / "sub").mkdir(parents=True)
    removed = cgroups.remove_empty(f"/ctconsole-a-{MID}", MID)
    assert removed == [str(tmp_path / f"ctconsole-a-{MID}" / "sub"), str(tmp_path / f"ctconsole-a-{MID}")]
    assert called == [1] and (tmp_path / "machine.slice").is_dir()


def test_mounts_reads_cgroup_hierarchies(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu\n"
        "31 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n"
        "32 25 0:26 /sub /srv/bound rw,relatime - cgroup cgroup rw,cpu\n"  # a bind of a sub-cgroup
        "33 25 0:28 / /proc rw - proc proc rw\n")
    assert cgroups.mounts(str(info)) == [Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/unified")]
