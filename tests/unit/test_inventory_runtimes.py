"""Runtime detectors name kernel-found containers from controller command lines and state files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctconsole.inventory.procfs import ProcStat
from ctconsole.inventory.runtimes import HostView, identify, libvirt_lxc, runc
from ctconsole.inventory.runtimes.namespaces import fallback


def _view(cmdlines: dict[int, str], parents: dict[int, int]) -> HostView:
    stats = {pid: ProcStat(pid, f"c{pid}", "S", ppid, pid, pid, 0, 1) for pid, ppid in parents.items()}
    return HostView(stats, lambda pid: cmdlines.get(pid, ""))


def test_lxc_monitor(tmp_path: Path) -> None:
    (tmp_path / "bb1").mkdir()
    (tmp_path / "bb1" / "config").write_text("lxc.uts.name = bb1\nlxc.rootfs.path = dir:/srv/bb1/rootfs\n")
    view = _view({50: f"[lxc monitor] {tmp_path} bb1"}, {50: 1, 51: 50})
    info = identify(51, view, {})
    assert info is not None
    assert (info.runtime, info.id, info.name, info.controller_pid) == ("lxc", "bb1", "bb1", 50)
    assert info.root_path == "/srv/bb1/rootfs"


def test_libvirt_lxc_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libvirt_lxc, "STATE_DIR", str(tmp_path))
    (tmp_path / "lv1.xml").write_text(
        "<domain type='lxc'><name>lv1</name><uuid>0b5c3e1e-1111-2222-3333-444455556666</uuid><devices>"
        "<filesystem type='mount'><source dir='/var/lab/lvroot'/><target dir='/'/></filesystem>"
        "</devices></domain>"
    )
    view = _view({60: "/usr/lib/libvirt/libvirt_lxc --name lv1 --console 25 --security=none"}, {60: 1, 61: 60})
    info = identify(61, view, {})
    assert info is not None and info.runtime == "libvirt-lxc"
    assert (info.id, info.name, info.root_path, info.controller_pid) == (
        "0b5c3e1e-1111-2222-3333-444455556666",
        "lv1",
        "/var/lab/lvroot",
        60,
    )


def test_nspawn() -> None:
    view = _view({70: "systemd-nspawn -D /var/lib/machines/deb -M deb12 --boot"}, {70: 1, 71: 70})
    info = identify(71, view, {})
    assert info is not None and (info.runtime, info.name, info.root_path) == (
        "nspawn",
        "deb12",
        "/var/lib/machines/deb",
    )


def test_runc_state_files(tmp_path: Path) -> None:
    root = tmp_path / "runc"
    (root / "ct1").mkdir(parents=True)
    (root / "ct1" / "state.json").write_text(
        json.dumps({"id": "ct1", "init_process_pid": 4321, "config": {"rootfs": "/bundle/rootfs"}})
    )
    (root / "broken").mkdir()
    (root / "broken" / "state.json").write_text("{not json")
    states = runc.states((str(root),))
    assert set(states) == {4321}
    info = identify(4321, _view({}, {4321: 1}), states)
    assert info is not None and (info.runtime, info.id, info.root_path) == ("runc", "ct1", "/bundle/rootfs")


def test_unclaimed_container_falls_back_to_namespaces() -> None:
    view = _view({80: "unshare --pid --fork sh"}, {80: 1, 81: 80})
    assert identify(81, view, {}) is None
    info = fallback(ProcStat(81, "sh", "S", 80, 81, 81, 0, 1), 4026532999)
    assert (info.runtime, info.id, info.name, info.controller_pid) == ("namespaces", "ns-4026532999", "sh-81", 80)
